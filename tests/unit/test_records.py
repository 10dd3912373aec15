"""WAL line encoding and Arrow conversion (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa

from metaclaw.ledger.records import (
    BadLine,
    decode_lines,
    encode_line,
    rows_to_table,
    to_micros,
)
from metaclaw.ledger.schemas import TABLES, TURNS


def test_round_trip_with_datetimes_and_nested_json() -> None:
    ts = datetime(2026, 11, 25, 12, 0, 1, 500, tzinfo=UTC)
    row = {"turn_id": "t1", "ts_start": ts, "request": {"messages": [{"role": "user"}]}}
    data = encode_line("turns", row) + encode_line("feedback", {"feedback_id": "f"})
    decoded = list(decode_lines(data))
    assert decoded[0] == ("turns", {**row, "ts_start": to_micros(ts)})
    assert decoded[1] == ("feedback", {"feedback_id": "f"})


def test_torn_tail_stops_reading_and_corrupt_lines_are_stepped_over() -> None:
    good = encode_line("turns", {"turn_id": "a"})
    later = encode_line("turns", {"turn_id": "c"})
    bad_crc = b"00000000" + encode_line("turns", {"turn_id": "b"})[8:]
    assert [r["turn_id"] for _, r in decode_lines(good + good[:-5])] == ["a"]
    bad: list[BadLine] = []
    got = decode_lines(good + bad_crc + b"garbage\n" + later + later[:7], bad)
    assert [r["turn_id"] for _, r in got] == ["a", "c"], "reading resumes after corruption"
    assert [(b.offset, b.reason) for b in bad] == [
        (len(good), "checksum mismatch"),
        (len(good) + len(bad_crc), "not a '<crc32> <json>' line"),
    ]
    assert bad[0].raw == bad_crc[:-1]


def test_rows_to_table_fills_schema_and_encodes_json() -> None:
    table = rows_to_table(
        TURNS,
        [
            {
                "turn_id": "t",
                "session_id": "s",
                "ts_start": 1_764_072_000_000_000,
                "usage": {"prompt_tokens": 1},
                "injected_skills": ["a@1"],
                "unknown": 5,
            }
        ],
        with_partition=True,
    )
    assert table.schema.names == [*TURNS.schema.names, "date"]
    row = table.to_pylist()[0]
    assert row["usage"] == '{"prompt_tokens":1}'
    assert row["injected_skills"] == ["a@1"]
    assert row["completion_text"] is None
    assert str(row["date"]) == "2025-11-25"
    assert table.schema.field("ts_start").type == pa.timestamp("us", tz="UTC")


def test_every_table_has_id_and_time_columns() -> None:
    for spec in TABLES.values():
        assert spec.schema.field(spec.id_column).nullable is False
        assert pa.types.is_timestamp(spec.schema.field(spec.time_column).type)
        for column in spec.json_columns:
            assert spec.schema.field(column).type == pa.string()
