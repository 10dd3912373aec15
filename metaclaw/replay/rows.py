"""Ledger rows for imported turns and feedback, with ids derived from the source.

The id of an imported turn is a hash of (format, source session id, source entry id), so
importing the same log twice yields the same ids and ledger ingest drops the second copy: a
re-import is a no-op, a crashed import can simply run again. Rows are off-policy data: no token
ids or logprobs, `served_by = "upstream"` (someone else's model produced them). Turn rows are
built by the ledger's one `TurnRow` constructor, as the proxy's are.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from metaclaw.ledger.schemas import DEFAULT_AGENT
from metaclaw.ledger.turn_row import TurnRow
from metaclaw.replay.model import Row

ENDPOINT = "backfill"
FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "function_call")


def stable_id(*parts: str) -> str:
    """32 hex digits (the width of live turn ids) from the parts, unambiguously joined."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


def turn_id(fmt: str, session_id: str, entry: str) -> str:
    return stable_id("turn", fmt, session_id, entry)


def json_arguments(arguments: Any) -> str:
    """Tool-call arguments as the JSON string OpenAI uses (objects are serialised compactly)."""
    if isinstance(arguments, str):
        return arguments
    return orjson.dumps(arguments if arguments is not None else {}).decode()


def openai_usage(
    prompt: int, completion: int, total: int | None = None, cached: int | None = None
) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": total if total is not None else prompt + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return usage


def turn_row(
    *,
    fmt: str,
    session_id: str,
    entry: str,
    turn_index: int,
    messages: list[dict[str, Any]],
    reply: dict[str, Any],
    model: str | None,
    ts_start: int,
    ts_end: int | None,
    finish_reason: str | None,
    usage: dict[str, Any] | None = None,
    tools: list[Any] | None = None,
    status: str = "ok",
    error: str | None = None,
) -> Row:
    """One `turns` row; `reply` is the assistant message in OpenAI shape."""
    tid = turn_id(fmt, session_id, entry)
    request: dict[str, Any] = {"model": model, "messages": messages}
    if tools:
        request["tools"] = tools
    end = ts_end if ts_end is not None and ts_end >= ts_start else ts_start
    response: dict[str, Any] = {
        "id": f"backfill-{tid}",
        "object": "chat.completion",
        "created": end // 1_000_000,
        "model": model,
        "choices": [{"index": 0, "message": reply, "finish_reason": finish_reason}],
    }
    if usage is not None:
        response["usage"] = usage
    content = reply.get("content")
    return TurnRow(
        turn_id=tid,
        session_id=session_id,
        turn_index=turn_index,
        ts_start=ts_start,
        ts_end=end,
        client="openai",
        endpoint=ENDPOINT,
        request=request,
        injected_skills=[],
        skill_set_version=None,
        served_by="upstream",
        model=model,
        policy_checkpoint=None,
        response=response,
        completion_text=content if isinstance(content, str) else None,
        tool_calls=reply.get("tool_calls") or None,
        finish_reason=finish_reason,
        prompt_token_ids=None,
        completion_token_ids=None,
        completion_logprobs=None,
        usage=usage,
        # Source timestamps bound the call (request sent .. reply stored); not a measurement.
        latency_ms=(end - ts_start) / 1000 if ts_end is not None and end > ts_start else None,
        ttft_ms=None,
        stream=None,
        status=status,
        http_status=200 if status == "ok" else None,
        error=error,
        source=f"backfill:{fmt}",
        sampling_temperature=None,  # someone else's model sampled it, at settings unknown
        sampling_top_p=None,
        injected_text=None,
        agent_id=DEFAULT_AGENT,  # imported logs name no agent key
    ).as_row()


def feedback_row(turn: Row, value: float, comment: str, key: str) -> Row:
    """Explicit feedback found in a log, tied to its turn; the id is stable across re-imports."""
    return {
        "feedback_id": stable_id("feedback", turn["turn_id"], key),
        "turn_id": turn["turn_id"],
        "session_id": turn["session_id"],
        "value": value,
        "comment": comment,
        "ts": turn["ts_end"],
    }
