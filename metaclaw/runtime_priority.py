"""Background work yields the CPU to users: lower OS priority and a torch thread cap.

Why: on embedded defaults the policy server (users' chat turns) and the train / deploy flows
(LoRA steps, the gate's sampling) share a small machine. Without this, a training step's torch
threads compete as equals with the server's decode steps and a user's 3 s reply takes tens of
seconds. With it, the flow's process runs at `training.nice` (the scheduler gives the server the
cores whenever it wants them) and uses at most `training.threads` torch threads (default: half
the cores), so the server keeps cores of its own.

Niceness on Linux is per thread, so every thread of the process is lowered, and threads started
later inherit it. It cannot be raised back without privileges: the flows run in a process of
their own (a Prefect flow-run subprocess), which ends with the work. The thread cap is restored
when the block ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from metaclaw.config import TrainingSettings

log = logging.getLogger("metaclaw.runtime_priority")


def thread_cap(configured: int, cores: int | None) -> int:
    """The torch thread count for background work: as configured, else half the cores."""
    if configured > 0:
        return configured
    return max(1, (cores or 2) // 2)


def lower_process_priority(niceness: int) -> int:
    """Raise every thread of this process to at least `niceness`; returns the niceness now."""
    tids = _thread_ids()
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
                os.setpriority(os.PRIO_PROCESS, tid, niceness)
    return os.getpriority(os.PRIO_PROCESS, 0)


def _thread_ids() -> list[int]:
    tasks = Path("/proc/self/task")
    if tasks.is_dir():
        return [int(p.name) for p in tasks.iterdir() if p.name.isdigit()]
    return [0]  # elsewhere: the calling process (BSD/macOS: process-wide)


@contextlib.contextmanager
def background_priority(settings: TrainingSettings) -> Iterator[None]:
    """Run the block as background work: `training.nice` and `training.threads` torch threads."""
    import torch

    niceness = lower_process_priority(settings.nice)
    before = torch.get_num_threads()
    threads = thread_cap(settings.threads, os.cpu_count())
    torch.set_num_threads(threads)
    log.info("background work at niceness %d with %d torch threads", niceness, threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
