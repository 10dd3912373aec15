"""The one constructor of a `turns` row, for every path that captures turns.

Live turns (the proxy's OpenAI and Anthropic endpoints, `proxy/capture.py`) and imported ones
(`replay/rows.py`) are built here. Every column is a field without a default, so a path that
does not say what it puts in a column does not type-check or run, and a column added to the
schema (`schemas.TURNS`) without a field here fails `tests/unit/test_capture_rows.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from metaclaw.ledger.records import Row


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnRow:
    """A `turns` row; the field order is the schema's column order."""

    turn_id: str
    session_id: str
    turn_index: int | None
    ts_start: int  # epoch µs
    ts_end: int | None
    client: str
    endpoint: str
    request: dict[str, Any]
    injected_skills: list[str]
    skill_set_version: int | None
    served_by: str
    model: str | None
    policy_checkpoint: str | None
    response: dict[str, Any] | None
    completion_text: str | None
    tool_calls: list[Any] | None
    finish_reason: str | None
    prompt_token_ids: list[int] | None
    completion_token_ids: list[int] | None
    completion_logprobs: list[float] | None
    usage: dict[str, Any] | None
    latency_ms: float | None
    ttft_ms: float | None
    stream: bool | None
    status: str
    http_status: int | None
    error: str | None
    source: str
    sampling_temperature: float | None
    sampling_top_p: float | None
    injected_text: str | None
    agent_id: str  # metaclaw.ledger.schemas.DEFAULT_AGENT when no agents are configured

    def as_row(self) -> Row:
        """The row for the WAL (shallow: the request and response documents are not copied)."""
        return {name: getattr(self, name) for name in COLUMNS}


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(TurnRow))
