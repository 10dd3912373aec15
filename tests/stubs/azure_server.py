"""Stub Azure OpenAI server: the Azure routes, key header and api-version rules, nothing else.

Why: the judge, the critic and the proxy upstream can use Azure OpenAI, whose wire format
differs from plain OpenAI in exactly the parts a test must check — the path
`/openai/deployments/{deployment}/chat/completions`, the `api-version` query parameter and the
`api-key` header. This server answers only requests that get all three right (404 / 401
otherwise, Azure-shaped), records every request, and replies with a settable text.

Run: `python tests/stubs/azure_server.py --key KEY --port 0` prints `READY http://HOST:PORT`.
From Python use `AzureStub`. Control routes: `GET /_stub/requests`, `POST /_stub/reply`
(`{"content": "..."}` sets the reply text).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

ROUTE = re.compile(r"^/openai/deployments/([^/]+)/chat/completions$")


class _State:
    def __init__(self, key: str) -> None:
        self.key = key
        self.reply = "ok"
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> Any:
            n = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(n) if n else b""
            return json.loads(raw) if raw else None

        def do_GET(self) -> None:
            if self.path == "/_stub/requests":
                with state.lock:
                    return self._send(200, state.requests)
            self._send(404, {"error": {"code": "404", "message": "Resource not found"}})

        def do_POST(self) -> None:
            body = self._body()
            if self.path == "/_stub/reply":
                state.reply = body["content"]
                return self._send(200, {"ok": True})
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            match = ROUTE.match(url.path)
            with state.lock:
                state.requests.append(
                    {
                        "path": url.path,
                        "query": query,
                        "body": body,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                    }
                )
            if not match or "api-version" not in query:
                return self._send(404, {"error": {"code": "404", "message": "Resource not found"}})
            if self.headers.get("api-key") != state.key:
                return self._send(
                    401,
                    {
                        "error": {
                            "code": "401",
                            "message": "Access denied due to invalid subscription key "
                            "or wrong API endpoint.",
                        }
                    },
                )
            self._send(
                200,
                {
                    "id": "chatcmpl-azure-stub",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": match.group(1),
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": state.reply},
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                },
            )

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), _handler(_State(args.key)))
    host, port = server.server_address[:2]
    print(f"READY http://{host}:{port}", flush=True)
    server.serve_forever()


class AzureStub:
    """The stub as a subprocess (a real network boundary for the `openai` Azure client)."""

    def __init__(self, key: str = "azure-test-key") -> None:
        self.key = key
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> AzureStub:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--key", self.key], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"azure stub did not start: {line!r}")
        self.url = line.removeprefix("READY ")
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)

    def requests(self) -> list[dict[str, Any]]:
        return httpx.get(self.url + "/_stub/requests", timeout=5).json()

    def set_reply(self, content: str) -> None:
        httpx.post(self.url + "/_stub/reply", json={"content": content}, timeout=5)


if __name__ == "__main__":
    main()
