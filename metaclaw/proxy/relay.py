"""What every proxied call shares: reading the body, relaying upstream errors, and streaming.

The streaming rule (docs/architecture.md, "Proxy rules"): chunks go to the client as they
arrive, but the terminal event (`data: [DONE]` or `message_stop`) is held back until the turn is
durable, because clients hang up right after it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from metaclaw.config import Settings
from metaclaw.proxy.capture import Recorder, TurnDraft
from metaclaw.proxy.completion import Completion
from metaclaw.proxy.errors import ProxyError, error_body
from metaclaw.proxy.routing import serve_with_policy
from metaclaw.proxy.session import SessionTracker
from metaclaw.proxy.sse import SSEEvent, SSEParser
from metaclaw.proxy.upstream import Upstream, UpstreamResponse, UpstreamStreamError
from metaclaw.skills.library import Injection, SkillLibrary

log = logging.getLogger("metaclaw.proxy")


class BodyTooLargeError(Exception):
    pass


CALLER = "metaclaw.caller"  # the ASGI scope key AuthMiddleware puts the `Caller` under
_AUTH_HEADERS = frozenset({"authorization", "x-api-key"})


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request: its agent, whether its key was one the proxy itself checked, and
    the skill libraries its turns read (its own, then those it shares; looked up once, by the
    middleware that already holds the registry)."""

    agent_id: str
    proxy_key: bool
    libraries: tuple[str, ...]


def caller(request: Request) -> Caller:
    found: Caller = request.scope[CALLER]
    return found


def client_headers(request: Request) -> Mapping[str, str]:
    """The client's headers as the upstream may see them. A key the proxy checked (an agent's
    or one of `proxy.api_keys`) is the proxy's, never the upstream's: it is removed here, so no
    path can forward it, whatever the upstream's own key settings."""
    if not caller(request).proxy_key:
        return request.headers
    return {k: v for k, v in request.headers.items() if k not in _AUTH_HEADERS}


@dataclass
class ProxyState:
    settings: Settings
    upstream: Upstream
    recorder: Recorder
    sessions: SessionTracker
    skills: SkillLibrary | None = None  # None: skills disabled

    def to_policy(self, model: str | None, session_id: str) -> bool:
        """Whether our policy server serves this request (see metaclaw.proxy.routing)."""
        proxy = self.settings.proxy
        return serve_with_policy(
            model,
            session_id,
            upstream_configured=self.upstream.configured,
            policy_models=proxy.policy_models,
            policy_share=proxy.policy_share,
        )

    async def select_skills(
        self, messages: list[dict[str, Any]], session_id: str | None, libraries: tuple[str, ...]
    ) -> Injection:
        """Skills for this request (never raises: retrieval failure injects nothing), chosen
        in a worker thread: cleaning and embedding a long message is CPU work that must not
        stall the event loop. `session_id` scopes proposed skills and pins the selection;
        `libraries` are the agents whose skills the caller may get."""
        if self.skills is None:
            return Injection()
        return await anyio.to_thread.run_sync(self.skills.select, messages, session_id, libraries)

    def upstream_body(self, body: dict[str, Any], *, policy: bool = False) -> dict[str, Any]:
        """The body sent upstream: the client's, unknown fields kept, model pinned if set (the
        policy server serves one model whatever the name)."""
        model = self.settings.upstream.model
        return {**body, "model": model} if model and not policy else body


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def error_response(err: ProxyError, *, anthropic: bool) -> Response:
    return json_response(error_body(err, anthropic=anthropic), err.status)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (never read whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise ProxyError(400, "client disconnected while sending the body") from None
    return b"".join(chunks)


def _too_large(limit: int) -> ProxyError:
    return ProxyError(
        413,
        f"request body exceeds proxy.max_body_bytes ({limit} bytes)",
        code="request_too_large",
    )


async def open_upstream(
    state: ProxyState, draft: TurnDraft, opener: Callable[[], Awaitable[UpstreamResponse]]
) -> UpstreamResponse:
    """Open the upstream call; a transport failure is recorded and becomes a shaped error."""
    try:
        return await opener()
    except ProxyError as err:
        await state.recorder.record(
            draft.finish(status="upstream_error", http_status=err.status, error=err.message)
        )
        raise


async def relay_upstream_error(
    state: ProxyState,
    draft: TurnDraft,
    resp: UpstreamResponse,
    *,
    anthropic: bool,
    translate: Callable[[int, dict[str, Any] | None], dict[str, Any]] | None = None,
) -> Response:
    """Pass an upstream 4xx/5xx to the client faithfully (status and body), and record it.

    `translate` reshapes an error from an upstream of the other API family.
    """
    try:
        raw = await resp.aread()
    except UpstreamStreamError as exc:
        raw = f"(body unreadable: {exc})".encode()
    finally:
        await resp.aclose()
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        parsed = None
    message = raw.decode("utf-8", "replace")[:2000]
    await state.recorder.record(
        draft.finish(status="upstream_error", http_status=resp.status_code, error=message)
    )
    if not isinstance(parsed, dict):
        parsed = None
    advice = backoff_headers(resp.headers)
    if translate is not None:
        return json_response(translate(resp.status_code, parsed), resp.status_code, advice)
    if parsed is not None and "error" in parsed:
        return json_response(parsed, resp.status_code, advice)
    err = ProxyError(resp.status_code, f"upstream error: {message}", "upstream_error")
    return json_response(error_body(err, anthropic=anthropic), err.status, advice)


def backoff_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's rate-limit advice, which SDK retry logic reads (`retry-after`, OpenAI's
    `x-ratelimit-*`, Anthropic's `anthropic-ratelimit-*`): relayed with its error."""
    return {
        name.lower(): value
        for name, value in headers.items()
        if name.lower() in ("retry-after", "retry-after-ms")
        or name.lower().startswith(("x-ratelimit-", "anthropic-ratelimit-"))
    }


async def read_upstream_json(
    state: ProxyState, draft: TurnDraft, resp: UpstreamResponse
) -> tuple[bytes, dict[str, Any]]:
    """The upstream's JSON reply; anything else is recorded and becomes a 502."""
    failure: str | None = None
    try:
        raw = await resp.aread()
    except UpstreamStreamError as exc:
        raw, failure = b"", str(exc)
    finally:
        await resp.aclose()
    try:
        data = orjson.loads(raw) if failure is None else None
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        err = ProxyError(
            502,
            f"upstream reply failed mid-way: {failure}"
            if failure
            else f"upstream returned a non-JSON body: {raw[:200].decode('utf-8', 'replace')!r}",
            "upstream_error",
            "upstream_bad_response",
        )
        await state.recorder.record(
            draft.finish(status="upstream_error", http_status=err.status, error=err.message)
        )
        raise err
    return raw, data


async def finish_turn(
    state: ProxyState,
    draft: TurnDraft,
    completion: Completion,
    response: dict[str, Any],
    messages: list[dict[str, Any]],
) -> None:
    """Make a successful turn durable and remember the conversation for session chaining.

    The chain link is in the shared store before the client has the reply, so its next turn
    continues the session on any worker; when another worker holds the store's lock, the link
    is written on the store's thread during the WAL's fsync, never waiting on the event loop."""
    row = draft.finish(status="ok", http_status=200, response=response, completion=completion)
    linked = state.sessions.remember(
        messages, completion.reply_message(), draft.session_id, draft.client_identity
    )
    await state.recorder.record(row)
    if linked is not None:
        await asyncio.wrap_future(linked)


class RelayResponse(StreamingResponse):
    """A streaming response that always closes its generator, so a disconnect is recorded now."""

    async def stream_response(self, send: Any) -> None:
        try:
            await super().stream_response(send)
        finally:
            closer = getattr(self.body_iterator, "aclose", None)
            if closer is not None:
                await closer()


class StreamRelay:
    """Forwards SSE events, feeds them to an interpreter, holds the terminal event for capture.

    Subclasses say how to read an event (`on_event`), which event ends the stream, what the
    finished reply is, and what the client receives instead of the raw event (translation).
    """

    def __init__(
        self, state: ProxyState, draft: TurnDraft, resp: UpstreamResponse, messages: list[Any]
    ) -> None:
        self.state = state
        self.draft = draft
        self.resp = resp
        self.messages = messages
        self.recorded = False

    # -- hooks -----------------------------------------------------------------------------
    def on_event(self, event: SSEEvent) -> list[bytes]:
        """Interpret one upstream event; return the bytes to send the client now."""
        raise NotImplementedError

    def is_terminal(self, event: SSEEvent) -> bool:
        raise NotImplementedError

    def terminal_bytes(self, event: SSEEvent | None) -> list[bytes]:
        """What the client gets once the turn is durable (the held-back terminal event)."""
        return [event.raw] if event is not None else []

    def completion(self) -> tuple[Completion, dict[str, Any]]:
        raise NotImplementedError

    def error_event(self, err: ProxyError) -> bytes:
        raise NotImplementedError

    # -- the loop --------------------------------------------------------------------------
    async def _finish_ok(self) -> None:
        completion, response = self.completion()
        await finish_turn(self.state, self.draft, completion, response, self.messages)
        self.recorded = True

    def _partial_row(self, status: str, http_status: int, error: str) -> dict[str, Any]:
        self.recorded = True
        completion, response = self.completion()
        return self.draft.finish(
            status=status,
            http_status=http_status,
            response=response,
            completion=completion,
            error=error,
        )

    async def _handle(self, event: SSEEvent) -> list[bytes]:
        """The bytes one event releases; a terminal event only once the turn is durable.

        One path for events completed mid-stream and for the last one `flush()` returns: an
        upstream that omits the final blank line must not get its terminal event past capture.
        """
        if self.is_terminal(event):
            await self._finish_ok()
            return self.terminal_bytes(event)
        return self.on_event(event)

    async def events(self) -> AsyncIterator[bytes]:
        parser = SSEParser()
        try:
            async for chunk in self.resp.aiter_raw():
                for event in parser.feed(chunk):
                    for out in await self._handle(event):
                        yield out
            for event in parser.flush():
                for out in await self._handle(event):
                    yield out
            if not self.recorded:
                if self.completion()[0].finish_reason is None:
                    raise ProxyError(
                        502,
                        "upstream stream ended before the reply finished",
                        "upstream_error",
                        "upstream_incomplete",
                    )
                await self._finish_ok()  # a clean end without a terminal event
                for out in self.terminal_bytes(None):
                    yield out
        except (UpstreamStreamError, ProxyError) as exc:
            err = (
                exc
                if isinstance(exc, ProxyError)
                else ProxyError(
                    502,
                    f"upstream stream failed: {type(exc).__name__}: {exc}",
                    "upstream_error",
                    "upstream_stream_error",
                )
            )
            log.warning("stream for turn %s failed: %s", self.draft.turn_id, err)
            await self.state.recorder.record(
                self._partial_row("upstream_error", err.status, err.message)
            )
            yield self.error_event(err)
        finally:
            if not self.recorded:
                # No await here: a cancelled task cannot wait, and nobody waits on this turn.
                self.state.recorder.record_nowait(
                    self._partial_row("disconnected", 499, "client disconnected mid-stream")
                )
            with anyio.CancelScope(shield=True):
                await self.resp.aclose()
