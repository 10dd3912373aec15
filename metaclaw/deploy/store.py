"""Registry I/O: read the `checkpoints` table into a `Book`, append planned rows under a lock.

Why a file lock: the deploy flow and a hand-typed `metaclaw checkpoints promote|rollback` may
act at once. Each change is read → plan → append; the lock makes that sequence atomic across
processes on this machine, so two writers never both supersede the same promoted checkpoint.
The rows of one change go in one durable WAL append; should a crash tear it, the reader still
sees one promoted checkpoint (the newest) and the next change repairs the rest.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from typing import Any

from metaclaw.config import LedgerPaths
from metaclaw.deploy.registry import Book
from metaclaw.ledger import append_rows, query

LOCK_NAME = "deploy.lock"


def read_book(paths: LedgerPaths) -> Book:
    """Every checkpoint's state from the ledger (Parquet + not-yet-ingested WAL)."""
    columns, values = query(paths, "SELECT * FROM checkpoints")
    return Book(dict(zip(columns, v, strict=True)) for v in values)


@contextlib.contextmanager
def registry_lock(paths: LedgerPaths) -> Iterator[None]:
    """Exclusive across processes for one read-plan-append sequence."""
    paths.home.mkdir(parents=True, exist_ok=True)
    fd = os.open(paths.home / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def append(paths: LedgerPaths, rows: list[dict[str, Any]]) -> None:
    if rows:
        append_rows(paths.wal, "checkpoints", rows)
