"""Stub distillation teacher: an OpenAI-compatible `/v1/completions` that echoes prompt logprobs.

Why: on-policy distillation asks a teacher for the log-probability of every token the student
served. Real teachers (vLLM, SGLang, llama.cpp) answer `POST /v1/completions` with `prompt` as
token ids, `echo: true`, `logprobs: 0`, `max_tokens: 1`; this server answers the same request
shape with deterministic values, `teacher_logprob(token, position)`, so tests can compute the
expected advantages by hand. The first prompt position has no logprob (null), as on real servers.

    python tests/stubs/training_server.py --port 0     # prints "READY http://127.0.0.1:PORT"

From Python: `with TeacherStub() as stub: stub.base_url` (includes `/v1`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def teacher_logprob(token: int, position: int) -> float:
    """The stub teacher's log-probability of `token` at `position` of the sequence."""
    return -0.05 - ((token * 7 + position) % 11) / 10


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:  # keep test output clean
        pass

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        if self.path != "/v1/completions":
            self._reply(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        prompt = body.get("prompt")
        if not (isinstance(prompt, list) and all(isinstance(t, int) for t in prompt)):
            self._reply(400, {"error": {"message": "prompt must be token ids", "type": "invalid"}})
            return
        if not body.get("echo") or body.get("logprobs") is None:
            self._reply(
                400, {"error": {"message": "echo and logprobs are required", "type": "invalid"}}
            )
            return
        generated = 0
        tokens = [*prompt, generated]
        token_logprobs: list[float | None] = [None] + [
            teacher_logprob(t, i) for i, t in enumerate(tokens) if i > 0
        ]
        self._reply(
            200,
            {
                "id": "cmpl-teacher",
                "object": "text_completion",
                "created": 0,
                "model": body.get("model", "teacher"),
                "choices": [
                    {
                        "index": 0,
                        "text": "",
                        "finish_reason": "length",
                        "logprobs": {
                            "tokens": [f"<{t}>" for t in tokens],
                            "token_logprobs": token_logprobs,
                            "top_logprobs": None,
                            "text_offset": list(range(len(tokens))),
                        },
                    }
                ],
                "usage": {
                    "prompt_tokens": len(prompt),
                    "completion_tokens": 1,
                    "total_tokens": len(prompt) + 1,
                },
            },
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), _Handler)
    print(f"READY http://{args.host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


class TeacherStub:
    """The stub as a subprocess; `base_url` ends in `/v1`."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> TeacherStub:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"teacher stub did not start: {line!r}")
        self.base_url = line.split(" ", 1)[1] + "/v1"
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


if __name__ == "__main__":
    main()
