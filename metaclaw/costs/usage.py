"""Token counts from an LLM response's `usage`, whichever API shaped it (pure).

Why tolerant: usage comes from upstreams we do not control, and a count that is missing, a
string, a float or negative must make the tokens unknown (NULL), never crash a scoring run or
be guessed as 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# OpenAI's names first, then Anthropic's: a body carrying both is read by OpenAI's.
_INPUT_KEYS = ("prompt_tokens", "input_tokens")
_OUTPUT_KEYS = ("completion_tokens", "output_tokens")


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int | None = None
    output_tokens: int | None = None


def _count(value: Any) -> int | None:
    """A token count, or None for anything that is not a non-negative int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _first(usage: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        if key in usage:
            return _count(usage[key])
    return None


def normalise(usage: Any) -> Usage:
    """Input/output tokens of a usage object: a dict, or its JSON text (the ledger's column)."""
    if isinstance(usage, str | bytes):
        try:
            usage = orjson.loads(usage)
        except orjson.JSONDecodeError:
            return Usage()
    if not isinstance(usage, dict):
        return Usage()
    return Usage(_first(usage, _INPUT_KEYS), _first(usage, _OUTPUT_KEYS))


def of_response(body: Any) -> Usage:
    """The usage of a whole chat-completions (or Anthropic messages) response body."""
    return normalise(body.get("usage")) if isinstance(body, dict) else Usage()
