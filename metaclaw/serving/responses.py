"""OpenAI response shapes for the policy server, plus MetaClaw's `metaclaw` extension field.

The extension field carries what the proxy records to make a served turn on-policy training
data: the exact prompt and completion token ids, the per-token (untempered) logprobs, the
checkpoint that produced them and the sampling temperature. Clients that do not know it
ignore it; the official SDKs keep unknown fields.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from metaclaw.serving.requests import Result

TokenText = Callable[[int], str]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def metaclaw_field(result: Result, top_p: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_token_ids": result.prompt_ids,
        "completion_token_ids": result.completion_ids,
        "completion_logprobs": result.completion_logprobs,
        "checkpoint": result.checkpoint,
        "temperature": result.temperature,
        "top_p": top_p,
    }
    if result.prompt_logprobs is not None:
        out["prompt_logprobs"] = result.prompt_logprobs
    return out


def usage(result: Result) -> dict[str, int]:
    prompt, completion = len(result.prompt_ids), len(result.completion_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _entry(token_text: TokenText, token: int, logprob: float) -> dict[str, Any]:
    text = token_text(token)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprob_content(
    token_text: TokenText,
    tokens: list[int],
    logprobs: list[float],
    tops: list[list[tuple[int, float]]],
) -> list[dict[str, Any]]:
    return [
        {
            **_entry(token_text, t, lp),
            "top_logprobs": [_entry(token_text, alt, alt_lp) for alt, alt_lp in top],
        }
        for t, lp, top in zip(tokens, logprobs, tops, strict=True)
    ]


def tool_calls_with_ids(calls: list[dict[str, Any]], rid: str) -> list[dict[str, Any]]:
    return [{"id": f"call_{rid[-12:]}_{i}", **call} for i, call in enumerate(calls)]


def chat_completion(
    rid: str, model: str, result: Result, *, logprobs: bool, top_p: float, token_text: TokenText
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": result.text if result.text or not result.tool_calls else None,
    }
    if result.tool_calls:
        message["tool_calls"] = tool_calls_with_ids(result.tool_calls, rid)
    lp = None
    if logprobs:
        lp = {
            "content": chat_logprob_content(
                token_text, result.completion_ids, result.completion_logprobs, result.completion_top
            ),
            "refusal": None,
        }
    return {
        "id": rid,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": lp, "finish_reason": result.finish_reason}
        ],
        "usage": usage(result),
        "system_fingerprint": fingerprint(result.checkpoint),
        "metaclaw": metaclaw_field(result, top_p),
    }


def fingerprint(checkpoint: str | None) -> str:
    """Which weights answered: `metaclaw-<checkpoint>` or `metaclaw-base`."""
    return f"metaclaw-{checkpoint or 'base'}"


def chat_chunk(
    rid: str,
    model: str,
    created: int,
    delta: dict[str, Any],
    *,
    finish: str | None = None,
    logprobs: list[dict[str, Any]] | None = None,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "system_fingerprint": fingerprint(checkpoint) if finish else "metaclaw",
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "logprobs": {"content": logprobs, "refusal": None} if logprobs else None,
                "finish_reason": finish,
            }
        ],
    }


def completion_logprobs(
    token_text: TokenText,
    tokens: list[int],
    logprobs: list[float | None],
    tops: list[list[tuple[int, float]]] | None,
    offset: int,
    with_top: bool,
) -> dict[str, Any]:
    texts = [token_text(t) for t in tokens]
    offsets, at = [], offset
    for text in texts:
        offsets.append(at)
        at += len(text)
    top = None
    if with_top:
        top = [
            ({token_text(a): lp for a, lp in alts} if alts else None)
            for alts in (tops or [[] for _ in tokens])
        ]
    return {
        "tokens": texts,
        "token_logprobs": logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


def text_completion(
    rid: str,
    model: str,
    result: Result,
    *,
    prompt_text: str,
    echo: bool,
    logprobs: int | None,
    top_p: float,
    token_text: TokenText,
) -> dict[str, Any]:
    text = (prompt_text if echo else "") + result.text
    lp = None
    if logprobs is not None:
        tokens: list[int] = list(result.completion_ids)
        values: list[float | None] = list(result.completion_logprobs)
        tops: list[list[tuple[int, float]]] = list(result.completion_top)
        if echo:
            tokens = result.prompt_ids + tokens
            values = list(result.prompt_logprobs or [None] * len(result.prompt_ids)) + values
            tops = list(result.prompt_top or [[] for _ in result.prompt_ids]) + tops
        lp = completion_logprobs(
            token_text, tokens, values, tops, 0 if echo else len(prompt_text), logprobs > 0
        )
    return {
        "id": rid,
        "object": "text_completion",
        "created": now(),
        "model": model,
        "choices": [
            {"index": 0, "text": text, "logprobs": lp, "finish_reason": result.finish_reason}
        ],
        "usage": usage(result),
        "system_fingerprint": fingerprint(result.checkpoint),
        "metaclaw": metaclaw_field(result, top_p),
    }


def completion_chunk(
    rid: str,
    model: str,
    created: int,
    text: str,
    *,
    finish: str | None = None,
    logprobs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}],
    }
