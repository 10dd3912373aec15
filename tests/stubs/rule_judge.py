"""A pairwise gate judge that applies a preference's rule: the benchmark's stand-in for a capable
judge that reads what the user asked for.

Why a rule and not the embedded model: a 135M judge cannot tell two nearly identical policies
apart, so the gate (correctly) never decides and nothing is promoted; a hosted judge is not
reachable here. This server answers the gate's pairwise prompt (`metaclaw.deploy.pairwise`)
over real HTTP like any OpenAI-compatible judge: "Winner: A" when only reply A complies,
"Winner: B" when only B does, "Winner: tie" otherwise. It judges the *gate's* prompts only; the
benchmark's before/after figure is counted on held-out questions the gate never sees.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from metaclaw.deploy.pairwise import A_BEGIN, A_END, B_BEGIN, B_END
from tests.stubs.upstream_server import chat_completion


def _between(text: str, begin: str, end: str) -> str | None:
    start = text.find(begin)
    stop = text.find(end, start + len(begin)) if start >= 0 else -1
    return text[start + len(begin) : stop].strip() if start >= 0 and stop >= 0 else None


def verdict(prompt: str, complies: Callable[[str], bool]) -> str:
    a, b = _between(prompt, A_BEGIN, A_END), _between(prompt, B_BEGIN, B_END)
    if a is None or b is None:
        return "I cannot find the two replies.\nWinner: tie"
    ok_a, ok_b = complies(a), complies(b)
    if ok_a == ok_b:
        return "Both replies are equally compliant.\nWinner: tie"
    return (
        f"Only reply {'A' if ok_a else 'B'} follows the user's preference.\n"
        f"Winner: {'A' if ok_a else 'B'}"
    )


class ChatJudge:
    """An OpenAI-compatible chat-completions server whose reply is `answer(prompt)` (the
    request's messages joined): `with ChatJudge(answer) as judge:` serves on 127.0.0.1;
    `judge.base_url` ends with /v1."""

    def __init__(self, answer: Callable[[str], str]) -> None:
        self.answer = answer
        self.calls = 0
        rule = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body: dict[str, Any] = json.loads(self.rfile.read(length) or b"{}")
                prompt = "\n".join(str(m.get("content") or "") for m in body.get("messages", []))
                rule.calls += 1
                text = rule.answer(prompt)
                reply = chat_completion(f"rule-{rule.calls}", body.get("model", "rule"), text)
                data = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class RuleJudge(ChatJudge):
    """The gate's pairwise judge for a rule: `with RuleJudge(rule) as judge:`."""

    def __init__(self, complies: Callable[[str], bool]) -> None:
        self.complies = complies
        super().__init__(lambda prompt: verdict(prompt, complies))
