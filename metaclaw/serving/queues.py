"""Waiting requests, one bounded queue per priority class, as both engines keep them.

Why shared: the local engine and the Tinker engine must refuse the same way (an OpenAI-shaped
503 `overloaded` when a class's queue holds `max_queue` requests, counted in `rejected`) and
report the same queue sizes in /healthz, so a background flood never fills users' queue
whichever engine serves.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from metaclaw.serving.priority import Priority
from metaclaw.serving.requests import Request, overloaded
from metaclaw.serving.sampling import SamplingParams


class PriorityQueues:
    """`_pending[priority]`: requests waiting to start; engines set `max_queue` and `stats`."""

    max_queue: int
    stats: Any

    def __init__(self) -> None:
        self._pending: dict[Priority, deque[Request]] = {p: deque() for p in Priority}

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._pending.values())

    def queued_by(self, priority: Priority) -> int:
        return len(self._pending[priority])

    @staticmethod
    def new_request(
        prompt_ids: list[int],
        params: SamplingParams,
        stream: bool,
        timeout_s: float,
        priority: Priority,
    ) -> Request:
        """A request bound to the running event loop (its events are delivered there)."""
        return Request(
            prompt_ids=list(prompt_ids),
            params=params,
            stream=stream,
            deadline=time.monotonic() + timeout_s,
            loop=asyncio.get_running_loop(),
            priority=priority,
        )

    def enqueue(self, req: Request) -> None:
        """Append to its class's queue; `overloaded` (503) when that queue is full."""
        queue = self._pending[req.priority]
        if len(queue) >= self.max_queue:
            self.stats.rejected += 1
            raise overloaded(len(queue), self.max_queue, req.priority)
        queue.append(req)
