"""Pure conversions between ledger rows, WAL lines and Arrow tables.

A WAL line is `<crc32 as 8 hex digits> <json>\\n` where the JSON is `{"t": table, "r": row}`.
The checksum lets a reader tell a torn write (a crash mid-line) from a real record, so it can
drop the tail of a segment a killed writer left behind without guessing, and step over a line
damaged inside a segment without losing the records after it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime

import orjson
import pyarrow as pa

from metaclaw.ledger.coerce import Row, RowError, coerce_rows, json_default, stored_value, to_micros
from metaclaw.ledger.schemas import PARTITION_COLUMN, TableSpec

__all__ = [
    "BadLine",
    "Row",
    "RowError",
    "decode_lines",
    "encode_line",
    "now_micros",
    "parse_line",
    "rows_to_table",
    "to_micros",
    "unique_by_id",
]
_OPTS = orjson.OPT_PASSTHROUGH_DATETIME


def now_micros() -> int:
    return to_micros(datetime.now(UTC))


def encode_line(table_name: str, row: Row) -> bytes:
    """One WAL line. Datetimes become epoch µs; nested JSON stays nested (encoded once)."""
    payload = orjson.dumps({"t": table_name, "r": row}, default=json_default, option=_OPTS)
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


@dataclass(frozen=True, slots=True)
class BadLine:
    """A complete WAL line that is not a valid record (corruption), kept for the dead letters."""

    offset: int
    reason: str
    raw: bytes


def decode_lines(data: bytes, bad: list[BadLine] | None = None) -> Iterator[tuple[str, Row]]:
    """Records of a segment's bytes.

    An unterminated last line is the tail of a write a crash cut short (never acknowledged): it
    ends the segment. A complete line that fails its checksum or does not parse is corruption
    inside the segment: it is collected into `bad` (ingest logs and quarantines it) and reading
    resumes at the next line, so one damaged line never hides the acknowledged records after it.
    """
    start = 0
    end = len(data)
    while start < end:
        newline = data.find(b"\n", start)
        if newline < 0:
            return  # unterminated tail: the writer died mid-line
        line = data[start:newline]
        offset, start = start, newline + 1
        record, reason = _parse(line)
        if record is not None:
            yield record
            continue
        if bad is not None:
            bad.append(BadLine(offset, reason, bytes(line)))


def parse_line(line: bytes) -> tuple[str, Row] | None:
    """One line's record (without its newline), or None when it is not a valid record."""
    return _parse(line)[0]


def _parse(line: bytes) -> tuple[tuple[str, Row] | None, str]:
    if len(line) < 10 or line[8:9] != b" ":
        return None, "not a '<crc32> <json>' line"
    payload = line[9:]
    try:
        crc = int(line[:8], 16)
    except ValueError:
        return None, "checksum is not hexadecimal"
    if zlib.crc32(payload) != crc:
        return None, "checksum mismatch"
    try:
        record = orjson.loads(payload)
        table_name, row = record["t"], record["r"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None, "checksum matches but the record is not {t, r} JSON"
    if not isinstance(table_name, str) or not isinstance(row, dict):
        return None, "record's table is not a name or its row is not an object"
    return (table_name, row), ""


def rows_to_table(
    spec: TableSpec, rows: Iterable[Row], *, with_partition: bool = False, coerced: bool = False
) -> pa.Table:
    """An Arrow table in the spec's schema; unknown keys are dropped, missing ones are null.

    Values are coerced to the schema first (`coerced=True`: the caller already did, e.g. to
    quarantine the rows that fail); a row that cannot be coerced raises `RowError`."""
    rows = list(rows)
    if not coerced:
        rows, bad = coerce_rows(spec, rows)
        if bad:
            raise RowError(bad[0][1])
    columns = {
        f.name: [stored_value(spec, f.name, row.get(f.name)) for row in rows] for f in spec.schema
    }
    table = pa.Table.from_pydict(columns, schema=spec.schema)
    if with_partition:
        dates = [_partition_date(spec.partition_value(row)) for row in rows]
        table = table.append_column(PARTITION_COLUMN, pa.array(dates, pa.date32()))
    return table


def _partition_date(value: str) -> date | None:
    return None if value == "unknown" else date.fromisoformat(value)


def unique_by_id(spec: TableSpec, rows: Iterable[Row]) -> dict[str, Row]:
    """First row for each id, in order: the ledger's rule for repeated ids."""
    unique: dict[str, Row] = {}
    for row in rows:
        unique.setdefault(row[spec.id_column], row)
    return unique
