"""Validate OpenAI request bodies into sampling parameters, with errors that name the field.

Pure functions over the decoded JSON body. Limits the server enforces (one choice per request,
a cap on new tokens) are applied here so every endpoint enforces them the same way; a
`max_tokens` above the cap is clamped (agents routinely send large values) and the response's
finish_reason says "length" when the cap cut the answer. A `response_format` (JSON object, JSON
schema, or MetaClaw's regex extension; chat and completions alike) becomes a `Constraint` the
engine enforces while sampling (`constrained.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metaclaw.serving.constrained import Constraint, ConstraintError, parse_response_format
from metaclaw.serving.requests import EngineError
from metaclaw.serving.sampling import SamplingParams

MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the OpenAI default for /v1/completions


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> EngineError:
    return EngineError(400, message, code, param=param)


@dataclass(frozen=True)
class ChatRequest:
    messages: list[Any]
    tools: list[Any] | None
    params: SamplingParams
    stream: bool
    include_usage: bool
    logprobs: bool


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str | list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None


def _number(
    body: dict[str, Any], key: str, default: float, lo: float, hi: float, lo_open: bool = False
) -> float:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise bad(f"'{key}' must be a number", key)
    if value > hi or value < lo or (lo_open and value == lo):
        left = "(" if lo_open else "["
        raise bad(f"'{key}' must be in {left}{lo}, {hi}], got {value}", key)
    return float(value)


def _int(body: dict[str, Any], key: str, lo: int, hi: int | None = None) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad(f"'{key}' must be an integer", key)
    if value < lo or (hi is not None and value > hi):
        bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise bad(f"'{key}' must be {bound}, got {value}", key)
    return value


def _bool(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise bad(f"'{key}' must be true or false", key)
    return value


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise bad("'stop' must be a non-empty string or a list of non-empty strings", "stop")
    if len(stops) > MAX_STOP:
        raise bad(f"'stop' takes at most {MAX_STOP} sequences", "stop")
    return tuple(stops)


def _common(body: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None, "invalid_json")
    n = _int(body, "n", 1)
    if n not in (None, 1):
        raise bad(
            "'n' must be 1: the local policy server samples one choice per request; "
            "send several requests instead",
            "n",
        )
    if _int(body, "best_of", 1) not in (None, 1):
        raise bad("'best_of' must be 1 on the local policy server", "best_of")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise bad("'stream_options' must be an object", "stream_options")
    return {
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, lo_open=True),
        "stop": _stop(body),
        "seed": _int(body, "seed", -(2**63)),
        "stream": _bool(body, "stream"),
        "include_usage": bool(options.get("include_usage")),
        "ignore_eos": _bool(body, "ignore_eos"),
    }


def parse_chat(body: Any, max_new_tokens: int) -> ChatRequest:
    common = _common(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty list", "messages")
    max_tokens = _int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1)
    logprobs = _bool(body, "logprobs")
    top = _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS) or 0
    if top and not logprobs:
        raise bad("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad("'tools' must be a list", "tools")
    if body.get("tool_choice") == "none":
        tools = None
    constraint = _constraint(body)
    params = SamplingParams(
        max_tokens=max_tokens if max_tokens is not None else max_new_tokens,
        temperature=common["temperature"],
        top_p=common["top_p"],
        stop=common["stop"],
        seed=common["seed"],
        top_logprobs=top,
        detect_tools=bool(tools),
        ignore_eos=common["ignore_eos"],
        constraint=constraint,
    )
    return ChatRequest(
        messages=messages,
        tools=tools or None,
        params=params,
        stream=common["stream"],
        include_usage=common["include_usage"],
        logprobs=logprobs,
    )


def parse_completion(body: Any) -> CompletionRequest:
    common = _common(body)
    prompt = _prompt(body.get("prompt"))
    echo = _bool(body, "echo")
    logprobs = _int(body, "logprobs", 0, MAX_TOP_LOGPROBS)
    max_tokens = _int(body, "max_tokens", 0)
    if max_tokens is None:
        max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS
    if max_tokens == 0 and not echo:
        raise bad(
            "'max_tokens': 0 generates nothing; it is only useful with 'echo': true "
            "(to score a prompt)",
            "max_tokens",
        )
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=common["temperature"],
        top_p=common["top_p"],
        stop=common["stop"],
        seed=common["seed"],
        top_logprobs=logprobs or 0,
        prompt_logprobs=echo and logprobs is not None,
        ignore_eos=common["ignore_eos"],
        constraint=_constraint(body),
    )
    return CompletionRequest(
        prompt=prompt,
        params=params,
        stream=common["stream"],
        include_usage=common["include_usage"],
        echo=echo,
        logprobs=logprobs,
    )


def _constraint(body: dict[str, Any]) -> Constraint | None:
    try:
        return parse_response_format(body.get("response_format"))
    except ConstraintError as exc:
        raise bad(str(exc), "response_format") from None


def _prompt(value: Any) -> str | list[int]:
    """A prompt is text or token ids; a list holding exactly one of those is unwrapped."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str | list):
        value = value[0]
    if isinstance(value, str):
        if not value:
            raise bad("'prompt' is empty", "prompt")
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(t, int) and not isinstance(t, bool) for t in value)
    ):
        return list(value)
    if isinstance(value, list) and len(value) > 1 and all(isinstance(p, str | list) for p in value):
        raise bad(
            "'prompt' holds several prompts; the local policy server takes one per request",
            "prompt",
        )
    raise bad("'prompt' must be a non-empty string or a non-empty list of token ids", "prompt")
