"""The proxy's heap and the garbage collector: start-up objects frozen, collector pauses counted.

Why: CPython's full (generation 2) collection walks every container object the process tracks,
on whichever thread triggers it, holding the GIL. After start-up the proxy holds ~165,000 such
objects (FastAPI, pydantic, aiohttp, LanceDB and pyarrow modules, the skill index), and every
full pass took 55-235 ms on the event-loop thread (measured under load, see bench/README.md,
"Tail latency"), stalling each request in flight at that moment: that was the proxy's p99.
Those objects live as long as the process, so once start-up is over they are moved to the
permanent generation (`gc.freeze()`); a full pass then walks only what was allocated since.

Start-up ends twice: when the app's resources are built (before the server accepts its first
connection), and when the skill library's first load, which runs in the background and imports
LanceDB, is done. The first freeze follows a full collection (nothing is being served yet); the
second does not, since requests may be in flight: the little cyclic garbage of that one load is
kept for the life of the process, a bounded one-off.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections import deque
from typing import Any

_KEPT = 64  # full-collection pauses kept for the median


class HeapGuard:
    """Freezes the start-up heap and times the full collections that come later."""

    def __init__(self) -> None:
        self.freezes = 0
        self.full_collections = 0
        self._wall_ms: deque[float] = deque(maxlen=_KEPT)
        self._cpu_ms: deque[float] = deque(maxlen=_KEPT)
        self._began: tuple[float, float] | None = None
        self._watching = False

    def freeze(self, *, collect: bool) -> None:
        """Move every object alive now out of the collector's reach (see the module docstring);
        full collections are timed for `health()` from the latest freeze on."""
        if collect:
            gc.collect()
        gc.freeze()
        self.freezes += 1
        self.full_collections = 0
        self._wall_ms.clear()
        self._cpu_ms.clear()
        if not self._watching:
            gc.callbacks.append(self._observe)
            self._watching = True

    def _observe(self, phase: str, info: dict[str, int]) -> None:
        """Times full passes only: young collections run several times per request."""
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._began = (time.perf_counter(), time.thread_time())
            return
        if self._began is None:
            return
        wall0, cpu0 = self._began
        self._began = None
        self.full_collections += 1
        self._wall_ms.append((time.perf_counter() - wall0) * 1000)
        # CPU time too: on a busy machine the wall time also counts the thread's preemption
        self._cpu_ms.append((time.thread_time() - cpu0) * 1000)

    def health(self) -> dict[str, Any]:
        """For /healthz: how much was frozen, and what full collections cost since the latest
        freeze (the last 64: median and max, wall and CPU milliseconds).

        (No count of the objects a full pass walks: `gc.get_objects()` hands out references to
        objects other threads are still building, which breaks CPython's in-place tuple
        building, so it is never called in a serving process.)"""
        return {
            "freezes": self.freezes,
            "frozen": gc.get_freeze_count(),
            "full_collections": self.full_collections,
            "full_wall_ms": _summary(self._wall_ms),
            "full_cpu_ms": _summary(self._cpu_ms),
        }

    def close(self) -> None:
        if self._watching:
            gc.callbacks.remove(self._observe)
            self._watching = False


def _summary(values: deque[float]) -> dict[str, float] | None:
    kept = list(values)
    if not kept:
        return None
    return {"p50": round(statistics.median(kept), 3), "max": round(max(kept), 3)}
