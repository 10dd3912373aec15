"""The terminal SSE event reaches the client only once the turn is durable, even when the
upstream ends its stream without the final blank line (issue 16, item 3).

The proxy app runs in-process and its ASGI `send` is observed: the moment the terminal bytes
are sent, the ledger (the real WAL, read through DuckDB) must already hold the turn as `ok`.
The upstream is a real HTTP server on a socket that writes a fixed SSE body and closes.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from metaclaw.config import Settings, SkillsSettings, UpstreamSettings
from metaclaw.proxy.app import create_app
from tests.helpers import rows
from tests.raw_upstream import RawUpstream

OPENAI_STREAM = (
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":"hi"},"finish_reason":null}]}'
    b"\n\n"
    b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]"  # no trailing blank line: the parser only completes it at flush()
)
ANTHROPIC_STREAM = (
    b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
    b'"type":"message","role":"assistant","model":"m","content":[],"stop_reason":null,'
    b'"usage":{"input_tokens":3,"output_tokens":0}}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    b'"content_block":{"type":"text","text":""}}\n\n'
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    b'"delta":{"type":"text_delta","text":"hi"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
    b'"usage":{"output_tokens":1}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}'  # no trailing blank line
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RawUpstream]:
    sse = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream"
    server = RawUpstream({"/messages": (sse, ANTHROPIC_STREAM), "/": (sse, OPENAI_STREAM)})
    yield server
    server.close()


async def _drive(
    settings: Settings, path: str, body: dict[str, Any], terminal: bytes
) -> tuple[list[dict[str, Any]] | None, bytes]:
    """POST through the proxy app; return the turn rows seen when `terminal` was sent."""
    app = create_app(settings)
    seen: list[list[dict[str, Any]]] = []
    sent: list[bytes] = []
    payload = orjson.dumps(body)
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": payload, "more_body": False}
        await asyncio.sleep(3600)  # the client never hangs up in this test
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            sent.append(chunk)
            if terminal in chunk and not seen:
                seen.append(
                    rows(
                        settings.paths,
                        f"SELECT status FROM turns WHERE "
                        f"request->>'$.metadata.marker' = '{body['metadata']['marker']}'",
                    )
                )

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "server": ("127.0.0.1", 30000),
        "client": ("127.0.0.1", 5555),
        "headers": [
            (b"content-type", b"application/json"),
            (b"host", b"127.0.0.1:30000"),
            (b"content-length", str(len(payload)).encode()),
        ],
    }
    async with app.router.lifespan_context(app):
        await app(scope, receive, send)
    return (seen[0] if seen else None), b"".join(sent)


def _settings(home: Path, **upstream: str) -> Settings:
    return Settings(
        home=home, upstream=UpstreamSettings(**upstream), skills=SkillsSettings(enabled=False)
    )


def test_openai_done_without_blank_line_is_held_until_durable(
    upstream: RawUpstream, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    body = {
        "model": "m",
        "stream": True,
        "metadata": {"marker": marker},
        "messages": [{"role": "user", "content": "hello"}],
    }
    settings = _settings(tmp_path / "home", base_url=upstream.url + "/v1")
    at_terminal, streamed = asyncio.run(_drive(settings, "/v1/chat/completions", body, b"[DONE]"))
    assert streamed.endswith(b"data: [DONE]"), streamed
    assert at_terminal == [{"status": "ok"}], "[DONE] was sent before the turn was durable"


def test_anthropic_message_stop_without_blank_line_is_held_until_durable(
    upstream: RawUpstream, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex
    body = {
        "model": "m",
        "stream": True,
        "max_tokens": 16,
        "metadata": {"marker": marker},
        "messages": [{"role": "user", "content": "hello"}],
    }
    settings = _settings(
        tmp_path / "home", base_url=upstream.url + "/v1", anthropic_base_url=upstream.url
    )
    at_terminal, streamed = asyncio.run(_drive(settings, "/v1/messages", body, b"message_stop"))
    assert streamed.endswith(b'data: {"type":"message_stop"}'), streamed
    assert at_terminal == [{"status": "ok"}], "message_stop was sent before the turn was durable"
