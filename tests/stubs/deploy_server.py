"""Stub pairwise judge: a real OpenAI-compatible chat server with a known preference.

Why: the deploy gate asks a judge "which of replies A and B is better?" through the `openai`
client. Tests need that judge to be a real HTTP server whose taste is known, so a candidate can
be trained *toward* it (and the gate must then accept it) or away from it (and be rejected).

It reads the two replies between the gate's markers (`metaclaw.deploy.pairwise.A_BEGIN`, …)
and answers `Winner: A|B|tie` according to its mode, switchable at runtime
(`POST /_stub/mode {"mode": ...}`):

* ``prefer:WORD`` (default ``prefer:Paris``) - the reply with more occurrences of WORD
  (case-insensitive) wins; equal counts are a tie;
* ``noisy:WORD:P`` - a judge with noise, deterministic in the replies: with probability P (and
  always when the counts of WORD are equal) the verdict is A or B by a hash of (A, B) — a
  decisive judge, never "tie" — else the reply with more WORD wins. Swapping A and B draws
  afresh, as an LLM judge's position noise does; the same pair in the same order always gets
  the same verdict;
* ``always-a`` - always A (a maximally position-biased judge);
* ``garbage`` - prose without a verdict; ``e500`` / ``e401`` - that HTTP error.

Requests are recorded: ``GET /_stub/requests``, ``GET /_stub/stats``, ``POST /_stub/reset``.

    python tests/stubs/deploy_server.py --port 0 --mode prefer:Paris   # prints READY http://…
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import logging
import re
import sys
from collections import deque
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

if __package__ in (None, ""):  # run as a script: make `tests` and `metaclaw` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from metaclaw.deploy.pairwise import A_BEGIN, A_END, B_BEGIN, B_END

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


def _between(text: str, begin: str, end: str) -> str | None:
    match = re.search(re.escape(begin) + r"\n(.*?)\n" + re.escape(end), text, re.S)
    return match.group(1) if match else None


def verdict_for(mode: str, text: str) -> str | None:
    """The reply content for the judge's user message under `mode` (None: an error mode)."""
    a, b = _between(text, A_BEGIN, A_END), _between(text, B_BEGIN, B_END)
    if mode == "always-a":
        return "Both are fine; the first reads better.\nWinner: A"
    if mode == "garbage":
        return "Hard to say, they both have merits."
    if mode.startswith("noisy:"):
        if a is None or b is None:
            return "I cannot find two replies.\nWinner: tie"
        _, word, noise = mode.split(":", 2)
        ca, cb = a.lower().count(word.lower()), b.lower().count(word.lower())
        draw = hashlib.sha256(f"{a}\x00{b}".encode()).digest()
        u, v = int.from_bytes(draw[:4]) / 2**32, int.from_bytes(draw[4:8]) / 2**32
        if ca != cb and u >= float(noise):
            winner = "A" if ca > cb else "B"
        else:
            winner = "A" if v < 0.5 else "B"
        return f"A mentions {word} {ca}×, B {cb}×; noise {u:.2f}.\nWinner: {winner}"
    if mode.startswith("prefer:"):
        if a is None or b is None:
            return "I cannot find two replies.\nWinner: tie"
        word = mode.split(":", 1)[1].lower()
        ca, cb = a.lower().count(word), b.lower().count(word)
        winner = "A" if ca > cb else "B" if cb > ca else "tie"
        return f"A mentions {word} {ca}×, B {cb}×.\nWinner: {winner}"
    return None


def create_app(mode: str) -> Starlette:
    state: dict[str, Any] = {"mode": mode, "calls": 0}
    records: deque[dict[str, Any]] = deque(maxlen=2000)
    ids = itertools.count(1)

    async def completions(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return openai_error(400, "request body is not JSON", "invalid_json")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list):
            return openai_error(400, "'messages' is required", "missing_required_parameter")
        records.append(body)
        state["calls"] += 1
        current = state["mode"]
        if current.startswith("e") and current[1:].isdigit():
            status = int(current[1:])
            return openai_error(status, f"stub judge scripted error {status}", current)
        text = "\n".join(
            m.get("content") or ""
            for m in messages
            if isinstance(m, dict) and m.get("role") == "user"
        )
        content = verdict_for(current, text)
        if content is None:
            return openai_error(400, f"unknown stub mode {current!r}", "bad_mode")
        return json_response(
            chat_completion(
                f"chatcmpl-pw-{next(ids)}", body.get("model") or "stub-pairwise", content
            )
        )

    async def set_mode(request: Request) -> Response:
        state["mode"] = orjson.loads(await request.body())["mode"]
        return json_response({"mode": state["mode"]})

    async def get_records(request: Request) -> Response:
        return json_response(list(records))

    async def stats(request: Request) -> Response:
        return json_response({"calls": state["calls"], "mode": state["mode"]})

    async def reset(request: Request) -> Response:
        records.clear()
        state["calls"] = 0
        return json_response({"ok": True})

    return Starlette(
        routes=[
            Route("/v1/chat/completions", completions, methods=["POST"]),
            Route("/_stub/mode", set_mode, methods=["POST"]),
            Route("/_stub/requests", get_records, methods=["GET"]),
            Route("/_stub/stats", stats, methods=["GET"]),
            Route("/_stub/reset", reset, methods=["POST"]),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--mode", default="prefer:Paris")
    args = parser.parse_args(argv)
    sock = bind_socket(args.host, args.port)
    config = uvicorn.Config(
        create_app(args.mode),
        loop="asyncio",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
    try:
        _ReadyServer(config, _url(args.host, sock.getsockname()[1])).run(sockets=[sock])
    finally:
        sock.close()


class PairwiseJudgeStub(StubProcess):
    """The stub as a subprocess; `base_url` ends in /v1 (what `judge.base_url` takes)."""

    server_file = Path(__file__).resolve()

    def __init__(self, mode: str = "prefer:Paris") -> None:
        super().__init__()
        self.mode = mode

    def arguments(self) -> list[str]:
        return ["--port", "0", "--mode", self.mode]

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def set_mode(self, mode: str) -> None:
        httpx.post(
            f"{self.url}/_stub/mode", json={"mode": mode}, timeout=10, trust_env=False
        ).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(f"{self.url}/_stub/requests", timeout=10, trust_env=False).json()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/_stub/stats", timeout=10, trust_env=False).json()

    def reset(self) -> None:
        httpx.post(f"{self.url}/_stub/reset", timeout=10, trust_env=False).raise_for_status()


if __name__ == "__main__":
    main()
