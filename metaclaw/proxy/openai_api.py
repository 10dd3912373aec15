"""`POST /v1/chat/completions` and `GET /v1/models`: OpenAI-compatible, passed through as is."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from metaclaw.proxy.accumulate import OpenAIStreamAccumulator
from metaclaw.proxy.completion import (
    POLICY_FIELD,
    Completion,
    PolicyTrace,
    from_accumulator,
    from_openai,
    pop_policy_trace,
)
from metaclaw.proxy.errors import ProxyError, openai_error_body
from metaclaw.proxy.fallback import open_policy_or_upstream
from metaclaw.proxy.relay import (
    ProxyState,
    RelayResponse,
    StreamRelay,
    client_headers,
    finish_turn,
    json_response,
    read_body,
    read_upstream_json,
    relay_upstream_error,
)
from metaclaw.proxy.sse import SSEEvent
from metaclaw.proxy.turns import open_turn
from metaclaw.proxy.validate import parse_json_object, validate_chat
from metaclaw.skills.query import inject

ENDPOINT = "/v1/chat/completions"


class OpenAIStreamRelay(StreamRelay):
    """Verbatim pass-through of an OpenAI SSE stream; `data: [DONE]` is the terminal event."""

    def __init__(self, *args: Any, strip_usage: bool = False) -> None:
        super().__init__(*args)
        self.acc = OpenAIStreamAccumulator()
        self.policy: PolicyTrace | None = None
        # The proxy asked for the usage chunk the client did not: record it, don't forward it.
        self.strip_usage = strip_usage

    def is_terminal(self, event: SSEEvent) -> bool:
        return event.data.strip() == "[DONE]"

    def on_event(self, event: SSEEvent) -> list[bytes]:
        if event.data:
            try:
                chunk = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                chunk = None
            if isinstance(chunk, dict):
                if "error" in chunk and "choices" not in chunk:
                    raise ProxyError(
                        502,
                        f"upstream stream error: {event.data[:500]}",
                        "upstream_error",
                        "upstream_stream_error",
                    )
                self.acc.add(chunk)
                if self.acc.first_content_seen:
                    self.draft.mark_first_token()
                if self.strip_usage and chunk.get("choices") == [] and "usage" in chunk:
                    return []
                if POLICY_FIELD in chunk:  # our policy's trace: keep it, don't forward it
                    self.policy = pop_policy_trace(chunk)
                    return [b"data: " + orjson.dumps(chunk) + b"\n\n"]
        return [event.raw]

    def completion(self) -> tuple[Completion, dict[str, Any]]:
        completion = from_accumulator(self.acc)
        completion.policy = self.policy
        return completion, self.acc.result()

    def error_event(self, err: ProxyError) -> bytes:
        return b"data: " + orjson.dumps(openai_error_body(err)) + b"\n\n"


async def chat_completions(request: Request) -> Response:
    state: ProxyState = request.app.state.proxy
    body = parse_json_object(await read_body(request, state.settings.proxy.max_body_bytes))
    validate_chat(body, model_required=not state.settings.upstream.model)
    messages: list[dict[str, Any]] = body["messages"]
    draft, injection = await open_turn(
        state, request, body, messages, client="openai", endpoint=ENDPOINT
    )
    stream = draft.stream
    to_policy = state.to_policy(body.get("model"), draft.session_id)
    options = body.get("stream_options")
    client_usage = isinstance(options, dict) and bool(options.get("include_usage"))

    def outgoing(policy: bool) -> dict[str, Any]:
        sent = state.upstream_body(body, policy=policy)
        if stream and not client_usage:  # token counts for the ledger, even if the client won't
            extra = options if isinstance(options, dict) else {}
            sent = {**sent, "stream_options": {**extra, "include_usage": True}}
        if injection.block:
            sent = {**sent, "messages": inject(messages, injection.block)}
        return sent

    resp = await open_policy_or_upstream(
        state,
        draft,
        to_policy,
        lambda policy: state.upstream.open_openai(
            "/chat/completions", outgoing(policy), client_headers(request), policy=policy
        ),
    )
    if resp.status_code >= 400:
        return await relay_upstream_error(state, draft, resp, anthropic=False)
    if stream:
        relay = OpenAIStreamRelay(state, draft, resp, messages, strip_usage=not client_usage)
        return RelayResponse(
            relay.events(), media_type="text/event-stream", headers=draft.headers()
        )
    raw, data = await read_upstream_json(state, draft, resp)
    completion = from_openai(data)
    if POLICY_FIELD in data:
        del data[POLICY_FIELD]
        raw = orjson.dumps(data)
    await finish_turn(state, draft, completion, data, messages)
    return Response(raw, media_type="application/json", headers=draft.headers())


async def list_models(request: Request) -> Response:
    """The upstream's model list; the configured model alone when the upstream cannot say."""
    state: ProxyState = request.app.state.proxy
    fallback = state.settings.upstream.model or "metaclaw"
    if state.upstream.openai_configured:
        try:
            status, content = await state.upstream.get_models(client_headers(request))
            if status == 200:
                return Response(content, media_type="application/json")
        except Exception:  # an unreachable upstream still leaves a usable answer
            pass
    return json_response(
        {
            "object": "list",
            "data": [{"id": fallback, "object": "model", "created": 0, "owned_by": "metaclaw"}],
        }
    )
