"""A request's progress, token by token, as every engine reports it: record the sampled token,
release its text, decide whether the reply is over, and at the end send the `Result`.

Why shared: the local engine samples one token per round and the Tinker engine receives a whole
sequence at once, but both must stop at the same places (end of turn, a stop string,
`max_tokens`), stream the same deltas and report the same `metaclaw` trace, so the turns either
serves are the same kind of training data.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from metaclaw.serving.requests import Delta, Request, Result
from metaclaw.serving.sampling import split_tool_calls


def advance(
    req: Request, token: int, logprob: float, top: list[tuple[int, float]], eos_ids: Collection[int]
) -> str | None:
    """Append a sampled token, stream its releasable text; the finish reason once it ends.

    The end-of-sequence token stays in the completion's ids (the policy must learn to stop) but
    adds no text; a stop string ends the reply at the token that completed it.
    """
    assert req.tracker is not None
    req.completion_ids.append(token)
    req.logprobs.append(logprob)
    req.top.append(top)
    finish: str | None
    if token in eos_ids and not req.params.ignore_eos:
        text, finish = "", "stop"
    else:
        text = req.tracker.push(token)
        finish = "stop" if req.tracker.stopped_by is not None else None
    if finish is None and len(req.completion_ids) >= req.params.max_tokens:
        finish = "length"
    if req.stream:
        req._send(Delta(text=text, token_id=token, logprob=logprob, top=top))
    return finish


def conclude(req: Request, finish: str) -> None:
    """Release held text, parse tool calls, mark the request done and send its `Result`."""
    assert req.tracker is not None and req.policy is not None
    tail = req.tracker.flush()
    if req.stream and tail:
        req._send(Delta(text=tail, token_id=None, logprob=None, top=[]))
    text, calls = req.tracker.text, list[dict[str, Any]]()
    if req.params.detect_tools:
        text, calls = split_tool_calls(text)
        if calls:
            finish = "tool_calls"
    req.done = True
    req._send(
        Result(
            prompt_ids=req.prompt_ids,
            completion_ids=req.completion_ids,
            completion_logprobs=req.logprobs,
            completion_top=req.top,
            prompt_logprobs=req.prompt_logprobs,
            prompt_top=req.prompt_top,
            text=text,
            tool_calls=calls,
            finish_reason=finish,
            checkpoint=req.policy.checkpoint_id,
            temperature=req.params.temperature,
        )
    )
