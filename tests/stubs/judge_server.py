"""Stub judge: a real OpenAI-compatible chat-completions server that returns scripted votes.

Why this exists: the `score` flow calls an LLM judge through the `openai` client. Tests and the
throughput benchmark need that judge to be a real HTTP server (timeouts, retries and concurrency
are only real over a socket) whose answers are known in advance, malformed ones included.

Script a turn by putting ``[[votes:A,B,C,...]]`` in the text the judge reviews (the stub reads
the first directive after the line ``## Assistant turn under review``, or anywhere when that line
is missing). Successive calls with the same prompt consume the entries in order; past the end,
the last entry repeats. Entries:

* ``+1`` ``0`` ``-1`` - a well-formed vote (reasoning, ``Score: …``, ``Reason: …``);
* ``json+1`` ``json0`` ``json-1`` - the vote as a JSON object;
* ``garbage`` - prose without a score; ``noscore`` - a reason line only; ``oob`` - ``Score: 2``;
  ``conflict`` - two different ``Score:`` lines; ``empty`` - empty content;
* ``e400`` ``e401`` ``e404`` ``e429`` ``e500`` ``e503`` - that HTTP error, OpenAI-shaped;
* ``hang`` - sleep 60 s before answering (a client timeout).
* ``busy`` - 503 with ``Retry-After: 1``, as the policy server answers when its queue is full.

With no directive the reply is ``--default`` (``+1``). ``--latency S`` delays every reply by S
seconds (the benchmark's 200 ms judge). Requests are recorded: ``GET /_stub/requests``,
``POST /_stub/reset``, ``GET /_stub/stats`` (calls, peak concurrency).

    python tests/stubs/judge_server.py --port 0 --latency 0.2     # prints READY http://HOST:PORT
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import logging
import re
import sys
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.stubs.process import StubProcess
from tests.stubs.upstream_server import (
    _ReadyServer,
    _url,
    bind_socket,
    chat_completion,
    json_response,
    openai_error,
)

RECORD_LIMIT = 2000
REVIEW_MARKER = "## Assistant turn under review"
HANG_S = 60.0
_DIRECTIVE = re.compile(r"\[\[votes:([^\]]*)\]\]")
_ERROR = re.compile(r"^e(\d{3})$")


def vote_text(entry: str) -> str | None:
    """The reply content for a script entry (None for entries that are not content)."""
    entry = entry.strip()
    scores = {"+1": "+1", "1": "+1", "0": "0", "-1": "-1"}
    if entry in scores:
        return (
            f"The assistant's turn was reviewed against what happened next.\n"
            f"Score: {scores[entry]}\nReason: scripted vote {scores[entry]}"
        )
    if entry.startswith("json") and entry[4:] in scores:
        value = int(scores[entry[4:]])
        return orjson.dumps({"score": value, "reason": f"scripted json vote {value}"}).decode()
    return {
        "garbage": "I think the answer is probably fine, hard to say really.",
        "noscore": "Reason: the reply looks correct but I forgot the score line",
        "oob": "Score: 2\nReason: out of range",
        "conflict": "Score: 1\nReason: good\nOn reflection:\nScore: -1",
        "empty": "",
    }.get(entry)


def script_of(messages: Any) -> list[str] | None:
    """The ``[[votes:…]]`` script in the judge's user message, if any."""
    if not isinstance(messages, list):
        return None
    text = "\n".join(
        m.get("content") or ""
        for m in messages
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
    )
    at = text.find(REVIEW_MARKER)
    match = _DIRECTIVE.search(text, at if at >= 0 else 0)
    if match is None:
        return None
    return [e.strip() for e in match.group(1).split(",") if e.strip()] or None


class JudgeStubState:
    def __init__(self, latency: float, default: str) -> None:
        self.latency = latency
        self.default = default
        self.records: deque[dict[str, Any]] = deque(maxlen=RECORD_LIMIT)
        self.cursor: defaultdict[str, int] = defaultdict(int)
        self.ids = itertools.count(1)
        self.calls = 0
        self.busy_at: list[float] = []  # when each "busy" 503 was answered, and the next call
        self.in_flight = 0
        self.peak = 0

    def next_entry(self, messages: Any) -> str:
        script = script_of(messages)
        if script is None:
            return self.default
        key = hashlib.blake2b(orjson.dumps(messages), digest_size=16).hexdigest()
        i = self.cursor[key]
        self.cursor[key] += 1
        return script[min(i, len(script) - 1)]


def create_app(latency: float = 0.0, default: str = "+1") -> Starlette:
    state = JudgeStubState(latency, default)

    async def completions(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return openai_error(400, "request body is not JSON", "invalid_json")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return openai_error(400, "'messages' is required", "missing_required_parameter")
        state.records.append(body)
        if len(state.busy_at) % 2:  # the call after a busy answer: how long the client waited
            state.busy_at.append(time.monotonic())
        state.calls += 1
        state.in_flight += 1
        state.peak = max(state.peak, state.in_flight)
        try:
            entry = state.next_entry(body["messages"])
            delay = state.latency + (HANG_S if entry == "hang" else 0.0)
            if delay:
                await asyncio.sleep(delay)
            if entry == "busy":
                state.busy_at.append(time.monotonic())
                busy = openai_error(503, "stub judge: queue full; retry shortly", "overloaded")
                busy.headers["retry-after"] = "1"
                return busy
            error = _ERROR.match(entry)
            if error:
                status = int(error.group(1))
                return openai_error(status, f"stub judge scripted error {status}", f"e{status}")
            content = vote_text("+1" if entry == "hang" else entry)
            if content is None:
                return openai_error(
                    400, f"stub judge: unknown script entry {entry!r}", "bad_script"
                )
            n = next(state.ids)
            return json_response(
                chat_completion(f"chatcmpl-judge-{n}", body.get("model") or "stub-judge", content)
            )
        finally:
            state.in_flight -= 1

    async def models(request: Request) -> Response:
        return json_response(
            {
                "object": "list",
                "data": [{"id": "stub-judge", "object": "model", "created": 0, "owned_by": "stub"}],
            }
        )

    async def records(request: Request) -> Response:
        return json_response(list(state.records))

    async def reset(request: Request) -> Response:
        state.records.clear()
        state.cursor.clear()
        state.calls = state.peak = 0
        state.busy_at.clear()
        return json_response({"ok": True})

    async def stats(request: Request) -> Response:
        return json_response(
            {
                "calls": state.calls,
                "peak_concurrency": state.peak,
                "in_flight": state.in_flight,
                "busy_at": state.busy_at,
            }
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/_stub/requests", records, methods=["GET"]),
            Route("/_stub/reset", reset, methods=["POST"]),
            Route("/_stub/stats", stats, methods=["GET"]),
        ]
    )


def serve(host: str, port: int, latency: float, default: str, log_level: str = "warning") -> None:
    sock = bind_socket(host, port)
    config = uvicorn.Config(
        create_app(latency, default),
        loop="uvloop",
        http="httptools",
        lifespan="off",
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=1,
        backlog=2048,
    )
    logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
    server = _ReadyServer(config, _url(host, sock.getsockname()[1]))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every reply")
    parser.add_argument("--default", default="+1", help="script entry used with no directive")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    serve(args.host, args.port, args.latency, args.default, args.log_level)


class StubJudge(StubProcess):
    """The stub judge as a subprocess; ``base_url`` ends in ``/v1`` (what judge config takes)."""

    server_file = Path(__file__).resolve()

    def __init__(self, latency: float = 0.0, default: str = "+1") -> None:
        super().__init__()
        self.args = ["--latency", str(latency), "--default", default]

    def arguments(self) -> list[str]:
        return ["--port", "0", *self.args]

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_stub/requests", timeout=10, trust_env=False).json()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_stub/stats", timeout=10, trust_env=False).json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_stub/reset", timeout=10, trust_env=False).raise_for_status()


if __name__ == "__main__":
    main()
