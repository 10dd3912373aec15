"""`POST /v1/messages`: the Anthropic Messages API, to an Anthropic upstream or translated.

With `upstream.anthropic_base_url` set, requests and streams pass through verbatim; otherwise
they are translated to the OpenAI-compatible upstream and back, so Anthropic clients (Claude
Code, the `anthropic` SDK) work against any OpenAI-compatible model.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from metaclaw.proxy.accumulate import AnthropicStreamAccumulator, OpenAIStreamAccumulator
from metaclaw.proxy.anthropic_compat import (
    OpenAIToAnthropicStream,
    anthropic_request_to_openai,
    encode_anthropic_event,
    openai_error_to_anthropic,
    openai_response_to_anthropic,
)
from metaclaw.proxy.completion import (
    Completion,
    PolicyTrace,
    finish_from_anthropic,
    from_accumulator,
    from_anthropic,
    from_openai,
    pop_policy_trace,
)
from metaclaw.proxy.errors import ProxyError, anthropic_error_body
from metaclaw.proxy.fallback import open_policy_or_upstream
from metaclaw.proxy.relay import (
    ProxyState,
    RelayResponse,
    StreamRelay,
    client_headers,
    finish_turn,
    json_response,
    open_upstream,
    read_body,
    read_upstream_json,
    relay_upstream_error,
)
from metaclaw.proxy.sse import SSEEvent
from metaclaw.proxy.turns import open_turn
from metaclaw.proxy.upstream import UpstreamResponse
from metaclaw.proxy.validate import parse_json_object, validate_messages
from metaclaw.skills.query import inject, inject_system

ENDPOINT = "/v1/messages"


def _anthropic_error_event(err: ProxyError) -> bytes:
    return encode_anthropic_event("error", anthropic_error_body(err))


def _loads(data: str) -> dict[str, Any] | None:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


class AnthropicStreamRelay(StreamRelay):
    """Verbatim pass-through of an Anthropic stream; `message_stop` is the terminal event."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.acc = AnthropicStreamAccumulator()

    def _add(self, event: SSEEvent) -> None:
        data = _loads(event.data) if event.data else None
        if data is None:
            return
        kind = event.event or str(data.get("type"))
        if kind == "error":
            raise ProxyError(
                502,
                f"upstream stream error: {event.data[:500]}",
                "upstream_error",
                "upstream_stream_error",
            )
        self.acc.add(kind, data)
        if self.acc.first_content_seen:
            self.draft.mark_first_token()

    def is_terminal(self, event: SSEEvent) -> bool:
        return event.event == "message_stop"

    def on_event(self, event: SSEEvent) -> list[bytes]:
        self._add(event)
        return [event.raw]

    def terminal_bytes(self, event: SSEEvent | None) -> list[bytes]:
        if event is not None:
            self._add(event)
        return super().terminal_bytes(event)

    def completion(self) -> tuple[Completion, dict[str, Any]]:
        completion = from_accumulator(self.acc)
        completion.finish_reason = finish_from_anthropic(completion.finish_reason)
        return completion, self.acc.result()

    def error_event(self, err: ProxyError) -> bytes:
        return _anthropic_error_event(err)


class TranslatedStreamRelay(StreamRelay):
    """An OpenAI stream from the upstream, re-encoded as Anthropic events for the client."""

    def __init__(self, *args: Any, model: str) -> None:
        super().__init__(*args)
        self.acc = OpenAIStreamAccumulator()
        self.conv = OpenAIToAnthropicStream(model)
        self.policy: PolicyTrace | None = None

    def is_terminal(self, event: SSEEvent) -> bool:
        return event.data.strip() == "[DONE]"

    def on_event(self, event: SSEEvent) -> list[bytes]:
        chunk = _loads(event.data) if event.data else None
        if chunk is None:
            return []
        if "error" in chunk and "choices" not in chunk:
            raise ProxyError(
                502,
                f"upstream stream error: {event.data[:500]}",
                "upstream_error",
                "upstream_stream_error",
            )
        self.policy = pop_policy_trace(chunk) or self.policy
        self.acc.add(chunk)
        if self.acc.first_content_seen:
            self.draft.mark_first_token()
        return [encode_anthropic_event(k, d) for k, d in self.conv.add(chunk)]

    def terminal_bytes(self, event: SSEEvent | None) -> list[bytes]:
        return [encode_anthropic_event(k, d) for k, d in self.conv.finish()]

    def completion(self) -> tuple[Completion, dict[str, Any]]:
        completion = from_accumulator(self.acc)
        completion.policy = self.policy
        return completion, openai_response_to_anthropic(self.acc.result(), self.conv.model)

    def error_event(self, err: ProxyError) -> bytes:
        return _anthropic_error_event(err)


async def messages(request: Request) -> Response:
    state: ProxyState = request.app.state.proxy
    body = parse_json_object(await read_body(request, state.settings.proxy.max_body_bytes))
    validate_messages(body, model_required=not state.settings.upstream.model)
    openai_body = anthropic_request_to_openai(body, state.settings.upstream.model)
    history: list[dict[str, Any]] = openai_body["messages"]
    draft, injection = await open_turn(
        state, request, body, history, client="anthropic", endpoint=ENDPOINT
    )
    stream = draft.stream
    model = str(openai_body.get("model") or "")
    to_policy = state.to_policy(body.get("model"), draft.session_id)
    if state.upstream.anthropic_native and not to_policy:
        # upstream.model names the OpenAI-compatible upstream's model: a Claude client's own
        # model choice stands; the setting only fills a request that named none.
        upstream_body = body if body.get("model") else {**body, "model": model}
        if injection.block:
            upstream_body = {
                **upstream_body,
                "system": inject_system(body.get("system"), injection.block),
            }
        headers = client_headers(request)
        resp = await open_upstream(
            state, draft, lambda: state.upstream.open_anthropic(upstream_body, headers)
        )
        if resp.status_code >= 400:
            return await relay_upstream_error(state, draft, resp, anthropic=True)
        if stream:
            relay = AnthropicStreamRelay(state, draft, resp, history)
            return RelayResponse(
                relay.events(), media_type="text/event-stream", headers=draft.headers()
            )
        raw, data = await read_upstream_json(state, draft, resp)
        await finish_turn(state, draft, from_anthropic(data), data, history)
        return Response(raw, media_type="application/json", headers=draft.headers())

    if injection.block:
        openai_body = {**openai_body, "messages": inject(history, injection.block)}

    def opener(policy: bool) -> Awaitable[UpstreamResponse]:
        return state.upstream.open_openai(
            "/chat/completions", openai_body, client_headers(request), policy=policy
        )

    if state.upstream.anthropic_native:  # a fallback there would need the Anthropic body
        resp = await open_upstream(state, draft, lambda: opener(to_policy))
    else:  # the policy server's 503 falls back to the OpenAI-compatible upstream
        resp = await open_policy_or_upstream(state, draft, to_policy, opener)
    if resp.status_code >= 400:
        return await relay_upstream_error(
            state, draft, resp, anthropic=True, translate=openai_error_to_anthropic
        )
    if stream:
        translated = TranslatedStreamRelay(state, draft, resp, history, model=model)
        return RelayResponse(
            translated.events(), media_type="text/event-stream", headers=draft.headers()
        )
    _, data = await read_upstream_json(state, draft, resp)
    message = openai_response_to_anthropic(data, model or None)
    await finish_turn(state, draft, from_openai(data), message, history)
    return json_response(message, headers=draft.headers())
