"""Stub upstream LLM server for MetaClaw's tests and benchmarks.

Why this exists: MetaClaw is a proxy that sits between chat clients and a hosted LLM API.
To test and benchmark it end to end without a real provider (no network, no keys, no cost,
deterministic replies) we stand a real local HTTP server in for the provider at its network
boundary. It speaks enough of the OpenAI Chat Completions API (``/v1/chat/completions``) and
the Anthropic Messages API (``/v1/messages``), streaming and not, for the official SDKs to
work against it, and its behaviour is steered by ``[[directive]]`` markers in the last user
message (errors, delays, tool calls, dropped connections, garbage bodies, long replies).
Every API request is recorded and can be read back from ``GET /_stub/requests``.

Run it as a process::

    python tests/stubs/upstream_server.py --host 127.0.0.1 --port 0

It prints exactly one line ``READY http://HOST:PORT`` on stdout once it accepts connections
(``--port 0`` picks a free port). From Python use :class:`StubUpstream`, which starts it as a
subprocess. It is built on Starlette + uvicorn (uvloop, httptools) + orjson so that it stays
out of the way in benchmarks.

Directives (in the text of the last user message; removed from the echoed text):

* ``[[error:CODE]]`` - answer HTTP CODE with a provider-shaped error body.
* ``[[delay:S]]`` - sleep S seconds before answering.
* ``[[chunk_delay:S]]`` - sleep S seconds between streamed events.
* ``[[tool:NAME]]`` - add a tool call to NAME with ``{"query": <cleaned text>}``; repeatable.
* ``[[text:SOME TEXT]]`` - reply with exactly SOME TEXT instead of the echo.
* ``[[words:N]]`` - reply with N words ``w0 w1 ...``.
* ``[[finish:length]]`` - finish_reason ``length`` (Anthropic ``max_tokens``); also accepts
  ``stop``, ``tool_calls`` and ``content_filter``.
* ``[[drop]]`` - streaming: send two events, then close the connection; otherwise close it
  without any response.
* ``[[garbage]]`` - 200 with body ``not json`` and content-type application/json.
* ``[[policy:CHECKPOINT]]`` - act as MetaClaw's policy server: the response (or the finishing
  chunk) carries the ``metaclaw`` extension field with token ids and logprobs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import re
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Scope

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.stubs.process import StubProcess

RECORD_LIMIT = 1000
DEFAULT_MODEL = "stub-model"
TOOL_ARG_FRAGMENT = 8  # characters of tool-call arguments JSON per streamed delta

_DIRECTIVE_RE = re.compile(
    r"\[\[(error|delay|chunk_delay|tool|text|words|finish|drop|garbage|policy)(?::(.*?))?\]\]",
    re.DOTALL,
)
_WORD_RE = re.compile(r"\s*\S+")
_SSE_HEADERS = {"cache-control": "no-cache"}
_JSON = "application/json"
_SSE = "text/event-stream"

# finish reason (OpenAI spelling) -> Anthropic stop_reason
_ANTHROPIC_STOP = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
}

# The uvicorn server running the app (set by ``serve``); used to close connections for
# ``[[drop]]``. When the app runs under anything else, dropping falls back to raising.
_CURRENT_SERVER: uvicorn.Server | None = None


class StubDrop(Exception):
    """Raised to abort a response when the connection cannot be closed directly."""


class BadDirective(ValueError):
    """A directive had a value that could not be parsed."""


# --------------------------------------------------------------------------------------
# Directives and canned replies
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Directives:
    """Behaviour requested by the last user message."""

    cleaned: str = ""
    error: int | None = None
    delay: float = 0.0
    chunk_delay: float = 0.0
    tools: list[str] = field(default_factory=list)
    text: str | None = None
    words: int | None = None
    finish: str | None = None
    drop: bool = False
    garbage: bool = False
    policy: str | None = None  # act as our policy server: add the `metaclaw` trace field


def parse_directives(text: str) -> Directives:
    """Extract ``[[name]]`` / ``[[name:value]]`` directives from ``text``."""
    d = Directives()
    for match in _DIRECTIVE_RE.finditer(text):
        name, value = match.group(1), match.group(2)
        raw = (value or "").strip()
        try:
            if name == "error":
                d.error = int(raw)
                if not 100 <= d.error <= 599:
                    raise ValueError(raw)
            elif name == "delay":
                d.delay = max(0.0, float(raw))
            elif name == "chunk_delay":
                d.chunk_delay = max(0.0, float(raw))
            elif name == "tool":
                if not raw:
                    raise ValueError("empty tool name")
                d.tools.append(raw)
            elif name == "text":
                d.text = value or ""
            elif name == "words":
                d.words = max(0, int(raw))
            elif name == "finish":
                d.finish = raw or "stop"
            elif name == "drop":
                d.drop = True
            elif name == "garbage":
                d.garbage = True
            elif name == "policy":
                d.policy = raw
        except ValueError as exc:
            raise BadDirective(f"bad directive [[{name}:{value}]]") from exc
    d.cleaned = _DIRECTIVE_RE.sub("", text).strip()
    return d


@dataclass(slots=True)
class Reply:
    """A canned assistant turn: optional text, tool calls, and a finish reason."""

    text: str | None
    tool_calls: list[tuple[str, str, str]]  # (id, name, arguments JSON)
    finish: str  # OpenAI spelling: stop / length / tool_calls / ...


def build_reply(d: Directives, tool_ids: Iterator[int], id_prefix: str) -> Reply:
    """Turn directives into the reply the stub will send."""
    if d.text is not None:
        text: str | None = d.text
    elif d.words is not None:
        text = " ".join(f"w{i}" for i in range(d.words))
    elif d.tools:
        text = None
    else:
        text = "Echo: " + (d.cleaned or "(empty)")
    args = orjson.dumps({"query": d.cleaned}).decode()
    calls = [(f"{id_prefix}{next(tool_ids)}", name, args) for name in d.tools]
    finish = d.finish or ("tool_calls" if calls else "stop")
    return Reply(text=text, tool_calls=calls, finish=finish)


def count_words(text: str | None) -> int:
    """Stub tokenizer: whitespace-separated words."""
    return len(text.split()) if text else 0


def completion_tokens(reply: Reply) -> int:
    """Tokens in the reply: words of the text plus words of each tool call's arguments."""
    return count_words(reply.text) + sum(count_words(a) for _, _, a in reply.tool_calls)


def content_text(content: Any) -> str:
    """Text of a message content: a string, or the concatenated ``text`` parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text") or ""
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def _has_text_part(content: Any) -> bool:
    if isinstance(content, str):
        return True
    return isinstance(content, list) and any(
        isinstance(p, dict) and p.get("type") == "text" for p in content
    )


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages")
    if not isinstance(msgs, list):
        return []
    return [m for m in msgs if isinstance(m, dict)]


def last_user_text_openai(body: dict[str, Any]) -> str:
    """Text of the last ``role: user`` message of a Chat Completions request."""
    for msg in reversed(_messages(body)):
        if msg.get("role") == "user":
            return content_text(msg.get("content"))
    return ""


def last_user_text_anthropic(body: dict[str, Any]) -> str:
    """Text of the last user message that has text (tool_result-only turns are skipped)."""
    for msg in reversed(_messages(body)):
        if msg.get("role") == "user" and _has_text_part(msg.get("content")):
            return content_text(msg.get("content"))
    return ""


def prompt_tokens(body: dict[str, Any]) -> int:
    """Words in the system prompt and in the text of every message."""
    total = count_words(content_text(body.get("system")))
    for msg in _messages(body):
        total += count_words(content_text(msg.get("content")))
    return total


def split_words(text: str) -> list[str]:
    """Split text into one piece per word, keeping the spaces; pieces join back to text."""
    if not text:
        return []
    pieces = _WORD_RE.findall(text)
    if not pieces:
        return [text]
    tail = len(text) - sum(len(p) for p in pieces)
    if tail:
        pieces[-1] += text[-tail:]
    return pieces


def split_fixed(text: str, size: int = TOOL_ARG_FRAGMENT) -> list[str]:
    """Split text into fragments of ``size`` characters."""
    return [text[i : i + size] for i in range(0, len(text), size)]


# --------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------


def json_response(obj: Any, status: int = 200) -> Response:
    """orjson-encoded JSON response."""
    return Response(orjson.dumps(obj), status_code=status, media_type=_JSON)


def chat_completion(completion_id: str, model: str, content: str) -> dict[str, Any]:
    """A non-streaming chat completion carrying one assistant message: what the judge and
    pairwise-judge stand-ins answer."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "logprobs": None,
                "message": {"role": "assistant", "content": content},
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def openai_error(status: int, message: str, code: str, kind: str = "stub_error") -> Response:
    """Error body shaped like OpenAI's."""
    return json_response({"error": {"message": message, "type": kind, "code": code}}, status)


def anthropic_error(status: int, message: str, kind: str = "api_error") -> Response:
    """Error body shaped like Anthropic's."""
    return json_response({"type": "error", "error": {"type": kind, "message": message}}, status)


def _sse_data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _sse_event(kind: str, obj: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


async def close_connection(scope: Scope) -> None:
    """Close the client's TCP connection abruptly, whatever has been sent so far.

    Under uvicorn this finds the connection's protocol by client address and closes its
    transport, then waits until uvicorn has noticed, so nothing more is written. Elsewhere
    it raises :class:`StubDrop` and lets the server abort the response.
    """
    server = _CURRENT_SERVER
    client = scope.get("client")
    if server is None or client is None:
        raise StubDrop("stub dropped the connection")
    client = tuple(client)
    connections = server.server_state.connections
    for proto in list(connections):
        if getattr(proto, "client", None) == client and getattr(proto, "transport", None):
            proto.transport.close()
            deadline = time.monotonic() + 2.0
            while proto in connections and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            return
    raise StubDrop("stub dropped the connection")


class _DropLogFilter(logging.Filter):
    """Hide uvicorn's traceback for the deliberate :class:`StubDrop` fallback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not _contains_drop(exc)


def _contains_drop(exc: BaseException | None) -> bool:
    if exc is None:
        return False
    if isinstance(exc, StubDrop):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(_contains_drop(e) for e in exc.exceptions)
    return _contains_drop(exc.__cause__ or exc.__context__)


async def paced(
    events: Iterator[bytes], chunk_delay: float, drop: bool, scope: Scope
) -> AsyncIterator[bytes]:
    """Yield SSE events, sleeping between them; with ``drop`` cut the connection after two."""
    for i, event in enumerate(events):
        if drop and i == 2:
            await close_connection(scope)
            return
        if i and chunk_delay:
            await asyncio.sleep(chunk_delay)
        yield event
    if drop:  # fewer than three events: still never finish cleanly
        await close_connection(scope)


# --------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------


class StubState:
    """Per-app mutable state: recorded requests and id counters."""

    def __init__(self, limit: int = RECORD_LIMIT) -> None:
        self.records: deque[dict[str, Any]] = deque(maxlen=limit)
        self.request_ids = itertools.count(1)
        self.tool_ids = itertools.count(1)


async def _read_json(request: Request, state: StubState) -> tuple[bool, Any]:
    """Read and record the request; return (ok, parsed body)."""
    raw = await request.body()
    ok, body = True, None
    if raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            ok = False
    if not isinstance(body, dict):
        ok = False
    state.records.append(
        {
            "method": request.method,
            "path": request.url.path,
            "headers": {
                k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]
            },
            "body": body,
        }
    )
    return ok, body


def create_app(record_limit: int = RECORD_LIMIT) -> Starlette:
    """Build the stub ASGI app (fresh state per call)."""
    state = StubState(record_limit)

    async def health(request: Request) -> Response:
        return json_response({"ok": True})

    async def models(request: Request) -> Response:
        model = {"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "stub"}
        return json_response({"object": "list", "data": [model]})

    async def stub_requests(request: Request) -> Response:
        return json_response(list(state.records))

    async def stub_reset(request: Request) -> Response:
        state.records.clear()
        return json_response({"ok": True})

    async def chat_completions(request: Request) -> Response:
        ok, body = await _read_json(request, state)
        if not ok:
            return openai_error(
                400, "request body is not a JSON object", "invalid_json", "invalid_request_error"
            )
        try:
            d = parse_directives(last_user_text_openai(body))
        except BadDirective as exc:
            return openai_error(400, str(exc), "bad_directive", "invalid_request_error")
        if d.delay:
            await asyncio.sleep(d.delay)
        if d.error is not None:
            return openai_error(d.error, f"stub injected error {d.error}", f"stub_{d.error}")
        if d.garbage:
            return Response(b"not json", media_type=_JSON)
        stream = bool(body.get("stream"))
        if d.drop and not stream:
            await close_connection(request.scope)
            return Response(b"")
        n = next(state.request_ids)
        reply = build_reply(d, state.tool_ids, "call_stub_")
        model = body.get("model") or DEFAULT_MODEL
        usage = _openai_usage(prompt_tokens(body), completion_tokens(reply))
        trace = _policy_trace(d.policy, usage) if d.policy is not None else None
        if not stream:
            completion = _openai_completion(n, model, reply, usage)
            return json_response({**completion, "metaclaw": trace} if trace else completion)
        opts = body.get("stream_options")
        include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
        events = _openai_events(n, model, reply, usage if include_usage else None, trace)
        return StreamingResponse(
            paced(events, d.chunk_delay, d.drop, request.scope),
            media_type=_SSE,
            headers=_SSE_HEADERS,
        )

    async def messages(request: Request) -> Response:
        ok, body = await _read_json(request, state)
        if not ok:
            return anthropic_error(
                400, "request body is not a JSON object", "invalid_request_error"
            )
        try:
            d = parse_directives(last_user_text_anthropic(body))
        except BadDirective as exc:
            return anthropic_error(400, str(exc), "invalid_request_error")
        if d.delay:
            await asyncio.sleep(d.delay)
        if d.error is not None:
            return anthropic_error(d.error, f"stub injected error {d.error}")
        if d.garbage:
            return Response(b"not json", media_type=_JSON)
        stream = bool(body.get("stream"))
        if d.drop and not stream:
            await close_connection(request.scope)
            return Response(b"")
        n = next(state.request_ids)
        reply = build_reply(d, state.tool_ids, "toolu_stub_")
        model = body.get("model") or DEFAULT_MODEL
        in_tok, out_tok = prompt_tokens(body), completion_tokens(reply)
        if not stream:
            return json_response(_anthropic_message(n, model, reply, in_tok, out_tok))
        events = _anthropic_events(n, model, reply, in_tok, out_tok)
        return StreamingResponse(
            paced(events, d.chunk_delay, d.drop, request.scope),
            media_type=_SSE,
            headers=_SSE_HEADERS,
        )

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/_stub/requests", stub_requests, methods=["GET"]),
        Route("/_stub/reset", stub_reset, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.stub = state
    return app


# ----- OpenAI shapes -------------------------------------------------------------------


def _openai_usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _openai_tool_calls(reply: Reply) -> list[dict[str, Any]]:
    return [
        {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
        for cid, name, args in reply.tool_calls
    ]


def _openai_completion(n: int, model: str, reply: Reply, usage: dict[str, int]) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.tool_calls:
        message["tool_calls"] = _openai_tool_calls(reply)
    return {
        "id": f"chatcmpl-stub-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": reply.finish}
        ],
        "usage": usage,
        "system_fingerprint": None,
    }


def _policy_trace(checkpoint: str, usage: dict[str, int]) -> dict[str, Any]:
    """The extension field MetaClaw's policy server adds (made-up ids, fixed logprobs)."""
    n = usage["completion_tokens"]
    return {
        "prompt_token_ids": list(range(usage["prompt_tokens"])),
        "completion_token_ids": list(range(100, 100 + n)),
        "completion_logprobs": [-0.5] * n,
        "checkpoint": checkpoint or None,
    }


def _openai_events(
    n: int,
    model: str,
    reply: Reply,
    usage: dict[str, int] | None,
    trace: dict[str, Any] | None = None,
) -> Iterator[bytes]:
    base: dict[str, Any] = {
        "id": f"chatcmpl-stub-{n}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
    }
    if usage is not None:  # like the real API: usage is null on every chunk but the last
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        extra = {"metaclaw": trace} if finish and trace else {}
        return _sse_data({**base, "choices": [choice], **extra})

    yield chunk({"role": "assistant", "content": ""})
    for piece in split_words(reply.text or ""):
        yield chunk({"content": piece})
    for index, (cid, name, args) in enumerate(reply.tool_calls):
        head = {"index": index, "id": cid, "type": "function"}
        yield chunk({"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]})
        for frag in split_fixed(args):
            yield chunk({"tool_calls": [{"index": index, "function": {"arguments": frag}}]})
    yield chunk({}, reply.finish)
    if usage is not None:
        yield _sse_data({**base, "choices": [], "usage": usage})
    yield b"data: [DONE]\n\n"


# ----- Anthropic shapes ----------------------------------------------------------------


def _anthropic_stop(finish: str) -> str:
    return _ANTHROPIC_STOP.get(finish, finish)


def _anthropic_message(n: int, model: str, reply: Reply, in_tok: int, out_tok: int) -> dict:
    content: list[dict[str, Any]] = []
    if reply.text is not None:
        content.append({"type": "text", "text": reply.text})
    for cid, name, args in reply.tool_calls:
        content.append({"type": "tool_use", "id": cid, "name": name, "input": orjson.loads(args)})
    return {
        "id": f"msg_stub_{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _anthropic_stop(reply.finish),
        "stop_sequence": None,
        "usage": {"input_tokens": in_tok, "output_tokens": out_tok},
    }


def _anthropic_events(
    n: int, model: str, reply: Reply, in_tok: int, out_tok: int
) -> Iterator[bytes]:
    message = {
        "id": f"msg_stub_{n}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": in_tok, "output_tokens": 0},
    }
    yield _sse_event("message_start", {"type": "message_start", "message": message})
    blocks: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if reply.text is not None:
        deltas = [{"type": "text_delta", "text": p} for p in split_words(reply.text)]
        blocks.append(({"type": "text", "text": ""}, deltas))
    for cid, name, args in reply.tool_calls:
        deltas = [{"type": "input_json_delta", "partial_json": f} for f in split_fixed(args)]
        blocks.append(({"type": "tool_use", "id": cid, "name": name, "input": {}}, deltas))
    for index, (start, deltas) in enumerate(blocks):
        yield _sse_event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
        if index == 0:
            yield _sse_event("ping", {"type": "ping"})
        for delta in deltas:
            yield _sse_event(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield _sse_event("content_block_stop", {"type": "content_block_stop", "index": index})
    yield _sse_event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": _anthropic_stop(reply.finish), "stop_sequence": None},
            "usage": {"output_tokens": out_tok},
        },
    )
    yield _sse_event("message_stop", {"type": "message_stop"})


# --------------------------------------------------------------------------------------
# Serving
# --------------------------------------------------------------------------------------


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _ReadyServer(uvicorn.Server):
    """uvicorn server that prints ``READY <url>`` once its sockets accept connections."""

    def __init__(self, config: uvicorn.Config, url: str) -> None:
        super().__init__(config)
        self.ready_url = url

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            print(f"READY {self.ready_url}", flush=True)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind a listening-ready TCP socket (``port`` 0 picks a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def serve(host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> None:
    """Run the stub in this process until SIGINT/SIGTERM."""
    global _CURRENT_SERVER
    sock = bind_socket(host, port)
    config = uvicorn.Config(
        create_app(),
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=1,
        backlog=2048,
    )
    logging.getLogger("uvicorn.error").addFilter(_DropLogFilter())
    server = _ReadyServer(config, _url(host, sock.getsockname()[1]))
    _CURRENT_SERVER = server
    try:
        server.run(sockets=[sock])
    finally:
        _CURRENT_SERVER = None
        sock.close()


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.log_level)


# --------------------------------------------------------------------------------------
# Helper for pytest fixtures and benchmarks
# --------------------------------------------------------------------------------------


class StubUpstream(StubProcess):
    """Starts the stub as a subprocess (sys.executable, this file) and waits for READY.

    Exposes ``base_url`` (no ``/v1`` suffix). Use as a context manager, or call
    :meth:`start` / :meth:`stop`; ``stop`` sends SIGTERM, then kills after 5 s.
    """

    server_file = Path(__file__).resolve()

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        extra_args: list[str] | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.extra_args = list(extra_args or [])
        self.ready_timeout = ready_timeout

    def arguments(self) -> list[str]:
        return ["--host", self.host, "--port", str(self.port), *self.extra_args]

    @property
    def base_url(self) -> str:
        return self.url

    def start(self) -> StubUpstream:
        super().start()
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def requests(self) -> list[dict[str, Any]]:
        """The recorded API requests, most recent last."""
        resp = httpx.get(f"{self.base_url}/_stub/requests", timeout=10, trust_env=False)
        resp.raise_for_status()
        return resp.json()

    def reset(self) -> None:
        """Forget the recorded requests."""
        resp = httpx.post(f"{self.base_url}/_stub/reset", timeout=10, trust_env=False)
        resp.raise_for_status()


if __name__ == "__main__":
    main()
