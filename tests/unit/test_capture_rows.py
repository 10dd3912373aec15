"""Every path that captures turns writes exactly the columns of the `turns` schema.

A column missing from one path would be NULL there without anyone deciding so; an extra key would
be dropped at write time. The live paths (OpenAI chat, Anthropic native and translated) are
driven through the real proxy in tests/integration/test_capture_rows.py; here, the row the
proxy's turn draft finishes into, and the rows every importer builds from real logs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from metaclaw.ledger.schemas import TURNS
from metaclaw.ledger.turn_row import COLUMNS
from metaclaw.proxy.capture import TurnDraft
from metaclaw.proxy.completion import Completion, PolicyTrace
from metaclaw.replay import ParseOptions, Turn
from metaclaw.replay.openai_jsonl import parse_openai_jsonl
from metaclaw.replay.openclaw import parse_openclaw_jsonl
from metaclaw.replay.trajectory import parse_trajectory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "replay"
SCHEMA = list(TURNS.schema.names)


def test_the_constructor_has_one_field_per_schema_column_in_order() -> None:
    assert list(COLUMNS) == SCHEMA


@pytest.mark.parametrize("client", ["openai", "anthropic"])
@pytest.mark.parametrize("served", ["upstream", "policy", "failed"])
def test_a_live_turn_row_has_exactly_the_schema_columns(client: str, served: str) -> None:
    draft = TurnDraft(
        session_id="s",
        turn_index=0,
        client=client,
        endpoint="/v1/chat/completions" if client == "openai" else "/v1/messages",
        request={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        stream=False,
        model="m",
    )
    policy = PolicyTrace([1, 2], [3], [-0.5], "ckpt-1", 1.0, 1.0) if served == "policy" else None
    if served == "failed":
        row = draft.finish(status="upstream_error", http_status=502, error="boom")
    else:
        done = Completion(text="hello", finish_reason="stop", model="m", policy=policy)
        row = draft.finish(status="ok", http_status=200, response={"id": "r"}, completion=done)
    assert list(row) == SCHEMA
    assert row["served_by"] == ("policy" if served == "policy" else "upstream")
    assert row["sampling_temperature"] == (1.0 if served == "policy" else None)


@pytest.mark.parametrize(
    ("parse", "fixture"),
    [
        (parse_openai_jsonl, "openai-chat.jsonl"),
        (parse_openclaw_jsonl, "openclaw-v3-branches.jsonl"),
        (parse_trajectory, "openclaw-trajectory-events.jsonl"),
    ],
)
def test_an_imported_turn_row_has_exactly_the_schema_columns(
    parse: Callable[[Path, ParseOptions, int], Iterator[object]], fixture: str
) -> None:
    items = parse(FIXTURES / fixture, ParseOptions(), 0)
    turns = [item.row for item in items if isinstance(item, Turn)]
    assert turns, f"{fixture} yields turns"
    for row in turns:
        assert list(row) == SCHEMA, f"{fixture}: {sorted(set(SCHEMA) ^ set(row))}"
        assert row["served_by"] == "upstream" and row["source"].startswith("backfill:")
        assert row["sampling_temperature"] is None and row["injected_text"] is None
