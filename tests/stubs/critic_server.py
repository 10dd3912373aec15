"""Stub critic LLM: a real HTTP server process speaking OpenAI chat completions, with scripted
replies, for the `diagnose` and `evolve` flows' tests.

Why: the critic is a hosted model at a network boundary; the flows must be tested against a real
HTTP endpoint through the real `openai` SDK, including the ways a model misbehaves — prose
instead of JSON, a truncated object, an unknown category, and skills that try to smuggle in
prompt injections — all of which the flows must reject.

Script it over HTTP: ``POST /_stub/script`` with ``{"replies": [ENTRY, ...]}`` where an entry is
``{"content": "<reply text>", "match": "<substring of the prompt>" (optional), "repeat": false,
"status": 200}``. Each chat request takes the first entry whose ``match`` occurs in the request's
messages (entries without ``match`` match everything); it is consumed unless ``repeat`` is true.
With no entry left the reply is an HTTP 500, so a test sees an unexpected call. ``GET
/_stub/requests`` returns the recorded request bodies. Helpers (JSON responses, error bodies,
socket binding, the READY line) come from ``upstream_server``.

Run: ``python tests/stubs/critic_server.py --port 0`` prints ``READY http://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.stubs.process import StubProcess
from tests.stubs.upstream_server import (
    _ReadyServer,
    _url,
    bind_socket,
    json_response,
    openai_error,
)


def create_app() -> Starlette:
    script: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    async def set_script(request: Request) -> Response:
        body = orjson.loads(await request.body() or b"{}")
        with lock:
            script[:] = list(body.get("replies") or [])
            records.clear()
        return json_response({"ok": True, "replies": len(script)})

    async def get_requests(request: Request) -> Response:
        return json_response(records)

    async def chat(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return openai_error(400, "body is not JSON", "invalid_json")
        prompt = "\n".join(str(m.get("content") or "") for m in body.get("messages") or [])
        with lock:
            records.append(body)
            entry = next((e for e in script if not e.get("match") or e["match"] in prompt), None)
            if entry is not None and not entry.get("repeat"):
                script.remove(entry)
        if entry is None:
            return openai_error(
                500, "critic stub: no scripted reply left for this prompt", "stub_exhausted"
            )
        status = int(entry.get("status", 200))
        if status != 200:
            return openai_error(status, "scripted critic error", "stub_error")
        content = entry.get("content", "")
        if not isinstance(content, str):
            content = orjson.dumps(content).decode()
        return json_response(
            {
                "id": f"chatcmpl-critic-{len(records)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "critic-stub"),
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "logprobs": None,
                        "message": {"role": "assistant", "content": content},
                    }
                ],
                "usage": {
                    "prompt_tokens": len(prompt.split()),
                    "completion_tokens": len(content.split()),
                    "total_tokens": 0,
                },
            }
        )

    return Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/_stub/script", set_script, methods=["POST"]),
            Route("/_stub/requests", get_requests, methods=["GET"]),
            Route("/health", lambda r: json_response({"ok": True}), methods=["GET"]),
        ]
    )


def serve(host: str, port: int) -> None:
    sock = bind_socket(host, port)
    config = uvicorn.Config(
        create_app(),
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    _ReadyServer(config, _url(host, sock.getsockname()[1])).run(sockets=[sock])


class StubCritic(StubProcess):
    """The stub as a subprocess; `script(...)` sets its replies, `requests()` reads them back."""

    server_file = Path(__file__).resolve()

    @property
    def base_url(self) -> str:
        return self.url

    def script(self, *replies: dict[str, Any] | str) -> None:
        entries = [r if isinstance(r, dict) else {"content": r} for r in replies]
        httpx.post(
            f"{self.base_url}/_stub/script", json={"replies": entries}, timeout=10, trust_env=False
        ).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.base_url}/_stub/requests", timeout=10, trust_env=False)
        resp.raise_for_status()
        return resp.json()


def main() -> None:
    parser = argparse.ArgumentParser(description="stub critic LLM (OpenAI chat completions)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
