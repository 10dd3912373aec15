"""Coercing values to the ledger schema (pure), and compaction tiers by file name."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from metaclaw.ledger.coerce import RowError, coerce_row, coerce_rows
from metaclaw.ledger.ingest import compaction_tier
from metaclaw.ledger.records import rows_to_table
from metaclaw.ledger.schemas import FEEDBACK, TURNS

BASE = {"turn_id": "t", "session_id": "s", "ts_start": 1_764_072_000_000_000}


def test_values_of_the_wrong_type_are_coerced() -> None:
    row = coerce_row(
        TURNS,
        {
            **BASE,
            "completion_text": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            "finish_reason": {"odd": True},
            "turn_index": "3",
            "latency_ms": 12,
            "stream": "true",
            "ts_end": "2026-01-01T00:00:00+00:00",
            "injected_skills": "s@1",
            "usage": "not json",
            "response": '{"id": "x"}',
            "skill_set_version": 7.0,
        },
    )
    assert row["completion_text"] == "ab", "text parts are joined"
    assert row["finish_reason"] == '{"odd":true}'
    assert row["turn_index"] == 3 and row["latency_ms"] == 12.0 and row["stream"] is True
    assert row["ts_end"] == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    assert row["injected_skills"] == ["s@1"]
    assert orjson.loads(row["usage"]) == "not json", "JSON columns always hold valid JSON"
    assert row["response"] == '{"id": "x"}' and row["skill_set_version"] == 7
    table = rows_to_table(TURNS, [row])  # and Arrow takes the result
    assert table.column("completion_text").to_pylist() == ["ab"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"turn_index": 2**40}, "'turn_index' of turns: 1099511627776 does not fit in 32 bits"),
        ({"turn_index": "three"}, "'turn_index' of turns"),
        ({"stream": "maybe"}, "'stream' of turns: expected true or false"),
        ({"prompt_token_ids": {"a": 1}}, "'prompt_token_ids' of turns: expected a list"),
        ({"session_id": None}, "'session_id' of turns is required but missing"),
    ],
)
def test_values_that_cannot_be_coerced_name_the_column(change: dict, message: str) -> None:
    with pytest.raises(RowError, match=message.replace("(", r"\(")):
        coerce_row(TURNS, {**BASE, **change})


def test_coerce_rows_splits_good_and_bad() -> None:
    good, bad = coerce_rows(
        FEEDBACK,
        [
            {"feedback_id": "a", "value": "0.5", "ts": 1},
            {"feedback_id": "b", "ts": 1},
        ],
    )
    assert [r["value"] for r in good] == [0.5]
    assert bad == [
        ({"feedback_id": "b", "ts": 1}, "column 'value' of feedback is required but missing")
    ]


def test_compaction_tier_from_file_names() -> None:
    hex32 = "c" * 32
    assert compaction_tier(f"turns/date=2026-01-01/part-{hex32}.parquet") == 0
    assert compaction_tier(f"turns/date=2026-01-01/part-c{hex32}.parquet") == 1  # older merges
    assert compaction_tier(f"turns/date=2026-01-01/part-L3-{hex32}.parquet") == 3


def test_list_elements_are_checked_per_batch_and_only_bad_rows_fail() -> None:
    fine = {**BASE, "prompt_token_ids": list(range(5000)), "injected_skills": ("a@1",)}
    wrong = {**BASE, "turn_id": "u", "prompt_token_ids": [1, "two"]}
    huge = {**BASE, "turn_id": "v", "completion_token_ids": [2**40]}
    good, bad = coerce_rows(TURNS, [fine, wrong, huge])
    assert [r["turn_id"] for r in good] == ["t"]
    assert good[0]["injected_skills"] == ["a@1"]
    assert [(r["turn_id"], why.split(":")[0]) for r, why in bad] == [
        ("u", "column 'prompt_token_ids' of turns"),
        ("v", "column 'completion_token_ids' of turns"),
    ]
