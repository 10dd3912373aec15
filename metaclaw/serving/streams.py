"""Waiting on a generation: the non-streamed result (freeing the slot when the client hangs up)
and the SSE streams of chat and text completions, built from the engine's `Delta`/`Result`
events. The routes in `app.py` hand a submitted request to one of these.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request

from metaclaw.serving import responses as shapes
from metaclaw.serving.protocol import Engine
from metaclaw.serving.requests import Delta, EngineError, Result

DISCONNECT_POLL_S = 1.0  # how often a waiting non-streamed request checks its client is there


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _next(req: Any, deadline: float) -> Delta | Result | EngineError:
    try:
        return await asyncio.wait_for(req.events.get(), max(1.0, deadline - time.monotonic()))
    except TimeoutError:
        req.cancel()
        return EngineError(504, "the policy engine stopped responding", "timeout", "server_error")


async def first_event(req: Any, deadline: float) -> Delta | Result:
    """The first event of a stream, before any byte is sent; a failure is raised, so the client
    gets a plain HTTP error (a 503 it, or the proxy, can act on) instead of a 200 stream that
    carries an error. Used by engines whose replies arrive whole (`Engine.answers_whole`)."""
    event = await _next(req, deadline)
    if isinstance(event, EngineError):
        raise event
    return event


async def _events(
    req: Any, deadline: float, first: Delta | Result | None
) -> AsyncIterator[Delta | Result | EngineError]:
    """The stream's events: `first` (already read by `first_event`), then the rest."""
    if first is not None:
        yield first
    while True:
        yield await _next(req, deadline)


async def result(req: Any, deadline: float, request: Request) -> Result | None:
    """Wait for a non-streamed result; a client that hangs up frees its batch slot (None)."""
    try:
        while True:
            try:
                event = await asyncio.wait_for(req.events.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return None
                if time.monotonic() > deadline:
                    raise EngineError(
                        504, "the policy engine stopped responding", "timeout", "server_error"
                    ) from None
                continue
            if isinstance(event, EngineError):
                raise event
            if isinstance(event, Result):
                return event
    finally:
        if not req.done:
            req.cancel()


async def chat_stream(
    req: Any,
    rid: str,
    engine: Engine,
    logprobs: bool,
    include_usage: bool,
    top_p: float,
    deadline: float,
    first: Delta | Result | None = None,
) -> AsyncIterator[bytes]:
    created = shapes.now()
    model = engine.name
    try:
        yield sse(shapes.chat_chunk(rid, model, created, {"role": "assistant", "content": ""}))
        async for event in _events(req, deadline, first):
            if isinstance(event, EngineError):
                yield sse(event.body())
                return
            if isinstance(event, Delta):
                lp = None
                if logprobs and event.token_id is not None:
                    assert event.logprob is not None
                    lp = shapes.chat_logprob_content(
                        engine.token_text, [event.token_id], [event.logprob], [event.top]
                    )
                if event.text or lp:
                    yield sse(
                        shapes.chat_chunk(rid, model, created, {"content": event.text}, logprobs=lp)
                    )
                continue
            for i, call in enumerate(shapes.tool_calls_with_ids(event.tool_calls, rid)):
                yield sse(
                    shapes.chat_chunk(rid, model, created, {"tool_calls": [{"index": i, **call}]})
                )
            final = shapes.chat_chunk(
                rid, model, created, {}, finish=event.finish_reason, checkpoint=event.checkpoint
            )
            final["metaclaw"] = shapes.metaclaw_field(event, top_p)
            if include_usage:
                final["usage"] = None
            yield sse(final)
            if include_usage:
                yield sse(
                    {
                        "id": rid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": shapes.usage(event),
                    }
                )
            yield b"data: [DONE]\n\n"
            return
    finally:
        if not req.done:
            req.cancel()


async def completion_stream(
    req: Any,
    rid: str,
    engine: Engine,
    comp: Any,
    prompt_text: str,
    top_p: float,
    deadline: float,
    first: Delta | Result | None = None,
) -> AsyncIterator[bytes]:
    created = shapes.now()
    model = engine.name
    offset = len(prompt_text)
    try:
        if comp.echo:
            yield sse(shapes.completion_chunk(rid, model, created, prompt_text))
        async for event in _events(req, deadline, first):
            if isinstance(event, EngineError):
                yield sse(event.body())
                return
            if isinstance(event, Delta):
                lp = None
                if comp.logprobs is not None and event.token_id is not None:
                    lp = shapes.completion_logprobs(
                        engine.token_text,
                        [event.token_id],
                        [event.logprob],
                        [event.top],
                        offset,
                        comp.logprobs > 0,
                    )
                if event.text or lp:
                    yield sse(shapes.completion_chunk(rid, model, created, event.text, logprobs=lp))
                offset += len(event.text)
                continue
            final = shapes.completion_chunk(rid, model, created, "", finish=event.finish_reason)
            final["metaclaw"] = shapes.metaclaw_field(event, top_p)
            yield sse(final)
            if comp.include_usage:
                yield sse(
                    {
                        "id": rid,
                        "object": "text_completion",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": shapes.usage(event),
                    }
                )
            yield b"data: [DONE]\n\n"
            return
    finally:
        if not req.done:
            req.cancel()
