"""Pure conversions between ledger rows, WAL lines and Arrow tables.

A WAL line is `<crc32 as 8 hex digits> <json>\\n` where the JSON is `{"t": table, "r": row}`.
The checksum lets a reader tell a torn write (a crash mid-line) from a real record, so it can
drop the tail of a segment a killed writer left behind without guessing.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pyarrow as pa

from metaclaw.ledger.schemas import PARTITION_COLUMN, TableSpec

Row = dict[str, Any]
_OPTS = orjson.OPT_PASSTHROUGH_DATETIME


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return to_micros(value)
    raise TypeError(f"cannot store {type(value).__name__} in the ledger")


def to_micros(value: datetime) -> int:
    """Epoch microseconds (UTC); naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1_000_000)


def now_micros() -> int:
    return to_micros(datetime.now(UTC))


def encode_line(table_name: str, row: Row) -> bytes:
    """One WAL line. Datetimes become epoch µs; nested JSON stays nested (encoded once)."""
    payload = orjson.dumps({"t": table_name, "r": row}, default=_default, option=_OPTS)
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def decode_lines(data: bytes) -> Iterator[tuple[str, Row]]:
    """Records of a segment's bytes; stops at the first torn or corrupt line (a crash's tail)."""
    start = 0
    end = len(data)
    while start < end:
        newline = data.find(b"\n", start)
        if newline < 0:
            return  # unterminated tail: the writer died mid-line
        line = data[start:newline]
        start = newline + 1
        if len(line) < 10 or line[8:9] != b" ":
            return
        payload = line[9:]
        try:
            crc = int(line[:8], 16)
        except ValueError:
            return
        if zlib.crc32(payload) != crc:
            return
        record = orjson.loads(payload)
        yield record["t"], record["r"]


def _json_text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value, default=_default, option=_OPTS).decode()


def rows_to_table(
    spec: TableSpec, rows: Iterable[Row], *, with_partition: bool = False
) -> pa.Table:
    """An Arrow table in the spec's schema; unknown keys are dropped, missing ones are null."""
    rows = list(rows)
    columns: dict[str, list[Any]] = {}
    for field in spec.schema:
        values = [row.get(field.name) for row in rows]
        if field.name in spec.json_columns:
            values = [_json_text(v) for v in values]
        elif pa.types.is_timestamp(field.type):
            values = [to_micros(v) if isinstance(v, datetime) else v for v in values]
        columns[field.name] = values
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
