"""The provider-neutral summary of one assistant reply, as the ledger and sessions need it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

# The ledger speaks one vocabulary: OpenAI's finish reasons.
_ANTHROPIC_STOP = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def finish_from_anthropic(stop_reason: str | None) -> str | None:
    return _ANTHROPIC_STOP.get(stop_reason, stop_reason) if stop_reason else None


POLICY_FIELD = "metaclaw"  # extension field our policy server adds to its responses


@dataclass(frozen=True)
class PolicyTrace:
    """What our own policy server reports about a reply: the on-policy training data."""

    prompt_token_ids: list[int]
    completion_token_ids: list[int]
    completion_logprobs: list[float]
    checkpoint: str | None
    # the sampling parameters the logprobs are of (the server renormalises within the top_p
    # nucleus at temperature T): training importance-weights only T = 1, top_p = 1 turns
    temperature: float | None = None
    top_p: float | None = None

    @classmethod
    def parse(cls, value: Any) -> PolicyTrace | None:
        """The trace from an extension field, or None when it is absent or malformed."""
        if not isinstance(value, dict):
            return None
        ids, completion, logprobs = (
            value.get("prompt_token_ids"),
            value.get("completion_token_ids"),
            value.get("completion_logprobs"),
        )
        if not (isinstance(ids, list) and isinstance(completion, list)):
            return None
        if not isinstance(logprobs, list) or len(logprobs) != len(completion):
            return None
        checkpoint = value.get("checkpoint")
        return cls(
            ids,
            completion,
            logprobs,
            checkpoint if isinstance(checkpoint, str) else None,
            _number(value.get("temperature")),
            _number(value.get("top_p")),
        )


def _number(value: Any) -> float | None:
    """A finite number from the trace, or None (absent, null, or not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if value == value and abs(value) != float("inf") else None


def pop_policy_trace(payload: dict[str, Any]) -> PolicyTrace | None:
    """Remove the extension field (clients need not see token ids) and parse it."""
    return PolicyTrace.parse(payload.pop(POLICY_FIELD, None))


@dataclass
class Completion:
    text: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None
    policy: PolicyTrace | None = None

    def __post_init__(self) -> None:
        self.usage = normal_usage(self.usage)

    def reply_message(self) -> dict[str, Any]:
        """The assistant message a client will send back next turn (for the hash chain)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.text or ""}
        if self.tool_calls:
            msg["tool_calls"] = self.tool_calls
        return msg


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def normal_usage(raw: Any) -> dict[str, int] | None:
    """Token counts in one shape whatever the API, so the ledger's `usage` sums across turns:
    `prompt_tokens`, `completion_tokens`, `total_tokens` (OpenAI's names), and `cached_tokens`
    when the upstream reports prompt-cache reads. Anthropic's `input_tokens` excludes cache
    reads and writes, which are prompt tokens too, so they are added in."""
    if not isinstance(raw, dict):
        return None
    if "input_tokens" in raw or "output_tokens" in raw:
        cached = _count(raw.get("cache_read_input_tokens"))
        prompt = (
            _count(raw.get("input_tokens"))
            + cached
            + _count(raw.get("cache_creation_input_tokens"))
        )
        completion = _count(raw.get("output_tokens"))
    elif "prompt_tokens" in raw or "completion_tokens" in raw:
        prompt, completion = _count(raw.get("prompt_tokens")), _count(raw.get("completion_tokens"))
        details = raw.get("prompt_tokens_details")
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else 0
    else:
        return None
    usage = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        usage["cached_tokens"] = cached
    return usage


class _Accumulated(Protocol):
    @property
    def text(self) -> str: ...
    @property
    def tool_calls(self) -> list[dict[str, Any]]: ...
    @property
    def finish_reason(self) -> str | None: ...

    usage: dict[str, Any] | None
    model: str | None


def from_accumulator(acc: _Accumulated) -> Completion:
    return Completion(acc.text, acc.tool_calls, acc.finish_reason, acc.usage, acc.model)


def from_openai(resp: dict[str, Any]) -> Completion:
    choices = resp.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") or {}
    return Completion(
        text=message.get("content"),
        tool_calls=list(message.get("tool_calls") or []),
        finish_reason=choice.get("finish_reason"),
        usage=resp.get("usage"),
        model=resp.get("model"),
        policy=PolicyTrace.parse(resp.get(POLICY_FIELD)),
    )


def from_anthropic(msg: dict[str, Any]) -> Completion:
    blocks = [b for b in msg.get("content") or [] if isinstance(b, dict)]
    # joined as the next request re-sends them (anthropic_compat): one text either way
    text = "\n".join(str(b["text"]) for b in blocks if b.get("type") == "text" and b.get("text"))
    calls = [
        {
            "id": b.get("id"),
            "type": "function",
            "function": {"name": b.get("name"), "arguments": orjson.dumps(b.get("input")).decode()},
        }
        for b in blocks
        if b.get("type") == "tool_use"
    ]
    stop = finish_from_anthropic(msg.get("stop_reason"))
    return Completion(text, calls, stop, msg.get("usage"), msg.get("model"))
