"""Turning one proxied LLM call into a `turns` row, and landing it without breaking serving.

`TurnDraft` is filled in as the call progresses; `Recorder` makes the row durable before the
response ends and, when the ledger fails, degrades to a counter and a loud log line instead of
failing the chat request (docs/architecture.md, "Proxy rules").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from metaclaw.ledger.records import Row, now_micros
from metaclaw.ledger.schemas import DEFAULT_AGENT, TURNS
from metaclaw.ledger.turn_row import TurnRow
from metaclaw.ledger.wal import WalWriter
from metaclaw.proxy.completion import Completion

log = logging.getLogger("metaclaw.capture")


@dataclass
class TurnDraft:
    """What is known about a turn while it is in flight."""

    session_id: str
    turn_index: int
    client: str  # openai | anthropic
    endpoint: str
    request: dict[str, Any]
    stream: bool
    model: str | None
    client_identity: str = ""  # hash of the presented key: seeds the session chain
    agent_id: str = DEFAULT_AGENT  # whose key the request carried (proxy/app.py AuthMiddleware)
    turn_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ts_start: int = field(default_factory=now_micros)
    started: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    injected_skills: list[str] = field(default_factory=list)  # skill_id@version
    skill_set_version: int | None = None
    # the exact skills block appended to the system prompt (None: nothing injected); training
    # and evaluation rebuild the served messages with metaclaw.skills.query.inject(_system)
    injected_text: str | None = None

    def headers(self) -> dict[str, str]:
        """Response headers naming the turn, so a client can post feedback on it."""
        return {"x-metaclaw-turn-id": self.turn_id, "x-metaclaw-session-id": self.session_id}

    def mark_first_token(self) -> None:
        if self.first_token is None:
            self.first_token = time.perf_counter()

    def finish(
        self,
        *,
        status: str,
        http_status: int,
        response: dict[str, Any] | None = None,
        completion: Completion | None = None,
        error: str | None = None,
    ) -> Row:
        """The complete `turns` row (`TurnRow`: every column of the schema said explicitly)."""
        done = completion or Completion()
        policy = done.policy
        now = time.perf_counter()
        latency_ms = (now - self.started) * 1000
        ttft_ms = (self.first_token - self.started) * 1000 if self.first_token else None
        if not self.stream and status == "ok":
            ttft_ms = latency_ms
        return TurnRow(
            turn_id=self.turn_id,
            session_id=self.session_id,
            turn_index=self.turn_index,
            ts_start=self.ts_start,
            ts_end=now_micros(),
            client=self.client,
            endpoint=self.endpoint,
            request=self.request,
            injected_skills=self.injected_skills,
            skill_set_version=self.skill_set_version,
            served_by="policy" if policy else "upstream",
            model=done.model or self.model,
            policy_checkpoint=policy.checkpoint if policy else None,
            response=response,
            completion_text=done.text,
            tool_calls=done.tool_calls or None,
            finish_reason=done.finish_reason,
            prompt_token_ids=policy.prompt_token_ids if policy else None,
            completion_token_ids=policy.completion_token_ids if policy else None,
            completion_logprobs=policy.completion_logprobs if policy else None,
            usage=done.usage,
            latency_ms=latency_ms,
            ttft_ms=ttft_ms,
            stream=self.stream,
            status=status,
            http_status=http_status,
            error=error,
            source="live",
            sampling_temperature=policy.temperature if policy else None,
            sampling_top_p=policy.top_p if policy else None,
            injected_text=self.injected_text,
            agent_id=self.agent_id,
        ).as_row()


@dataclass
class CaptureStats:
    recorded: int = 0
    failed: int = 0


class Recorder:
    """Lands turns in the WAL; never raises into the request path."""

    def __init__(self, wal: WalWriter, timeout_s: float) -> None:
        self.wal = wal
        self.timeout_s = timeout_s
        self.stats = CaptureStats()
        # counted from the event loop and from the WAL thread (record_nowait's callbacks)
        self._stats_lock = threading.Lock()

    async def record(self, row: Row) -> bool:
        """Wait until the row is durable (bounded by the timeout); False when it is not."""
        try:
            await self.wal.append_async(TURNS.name, row, self.timeout_s)
        except Exception as exc:
            self._failed(row, exc)
            return False
        self._recorded()
        return True

    def record_nowait(self, row: Row) -> None:
        """For turns nobody waits on (the client hung up): queue it, count the outcome later."""
        try:
            fut = self.wal.submit(TURNS.name, row)
        except Exception as exc:
            self._failed(row, exc)
            return
        fut.add_done_callback(lambda f: self._done(row, f))

    def _done(self, row: Row, fut: Future[None]) -> None:
        exc = fut.exception()
        if exc is None:
            self._recorded()
        else:
            self._failed(row, exc)

    def _recorded(self) -> None:
        with self._stats_lock:
            self.stats.recorded += 1

    def _failed(self, row: Row, exc: BaseException) -> None:
        with self._stats_lock:
            self.stats.failed += 1
        reason = "timed out" if isinstance(exc, asyncio.TimeoutError | TimeoutError) else exc
        log.error(
            "LEDGER WRITE FAILED for turn %s (session %s): %s — the response was still served; "
            "%d turn(s) lost so far",
            row.get("turn_id"),
            row.get("session_id"),
            reason,
            self.stats.failed,
        )
