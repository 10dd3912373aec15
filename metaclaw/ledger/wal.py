"""Durable append path: write-ahead segments with group commit.

Why this shape: the proxy must not answer a client before the turn is on disk (a kill -9 right
after the response must lose nothing), yet one fsync per turn would cap throughput at the
disk's fsync rate. One writer thread drains everything queued since its last fsync, writes it
in one `write`, fsyncs once, and only then resolves every waiter: many turns share one fsync.

Each writer owns its active segment through an exclusive `flock`, taken before the segment
appears under its `.wal` name. Ingest skips locked segments; the kernel drops the lock when the
process dies, so a killed writer's segment becomes ingestible without any cleanup step.

The queue in front of the writer thread is bounded in rows and bytes, so a stalled or full disk
makes appends fail loudly instead of exhausting memory; after a failed write the writer starts
a fresh segment and carries on once the disk accepts writes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metaclaw.ledger.coerce import RowError, coerce_row
from metaclaw.ledger.records import Row, encode_line
from metaclaw.ledger.schemas import table as table_spec

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".wal"
STAGING_SUFFIX = ".new"  # a segment being created, not yet locked and renamed in


class WalClosedError(RuntimeError):
    pass


@dataclass
class WalStats:
    records_written: int = 0
    fsyncs: int = 0
    errors: int = 0
    dropped: int = 0
    segments_sealed: int = 0


def fsync_dir(path: Path) -> None:
    """Make a new or renamed directory entry durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Segment:
    """The writer's active segment, owned through an exclusive `flock`.

    Why create under another name: ingest takes every `.wal` file it can lock. A segment that
    appeared under its final name before its writer locked it could be claimed in that gap, found
    empty, published and unlinked, while the writer went on to write to (and acknowledge rows
    from) the unlinked file. So the file is created as `<name>.new` (never listed), locked, and
    only then renamed in: a `.wal` file is always locked by its writer from its first moment.
    """

    def __init__(self, directory: Path, on_created: Callable[[Path], None] | None = None) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        self.path = directory / f"seg-{stamp}-{os.getpid()}-{uuid.uuid4().hex[:8]}{SEGMENT_SUFFIX}"
        staging = self.path.with_name(self.path.name + STAGING_SUFFIX)
        # 0600: segments hold users' conversations.
        self.fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        try:
            if on_created is not None:
                on_created(staging)  # tests pause here: the gap between create and lock
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            os.rename(staging, self.path)
            fsync_dir(directory)
        except BaseException:
            os.close(self.fd)
            staging.unlink(missing_ok=True)
            raise
        self.size = 0
        self.opened = time.monotonic()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        os.fsync(self.fd)
        self.size += len(data)

    def seal(self) -> None:
        """Release the segment to ingest; an empty one is simply removed."""
        if self.size == 0:
            self.path.unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


_Item = tuple[bytes, Future[None]]


class WalFullError(RuntimeError):
    """The queue in front of the writer is full (the disk is slower than the appends)."""


class WalWriter:
    """Appends ledger rows durably. `submit` returns a future resolved once the row is fsynced.

    The queue in front of the writer thread is bounded by rows (`queue_max`) and by bytes
    (`queue_max_bytes`): when the disk stalls, memory stops growing and appends fail loudly
    (`WalFullError`) instead; blocking callers (`append`) wait for room first.
    """

    def __init__(
        self,
        directory: Path,
        *,
        rotate_bytes: int = 64 * 1024 * 1024,
        rotate_s: float = 5.0,
        queue_max: int = 100_000,
        queue_max_bytes: int = 256 * 1024 * 1024,
        batch_max: int = 4096,
        on_segment_created: Callable[[Path], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._on_segment_created = on_segment_created
        self.rotate_bytes = rotate_bytes
        self.rotate_s = rotate_s
        self.batch_max = batch_max
        self.queue_max = queue_max
        self.queue_max_bytes = queue_max_bytes
        self.stats = WalStats()
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._room = threading.Condition()  # guards _queued / _queued_bytes
        self._queued = 0
        self._queued_bytes = 0
        self._segment: _Segment | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> WalWriter:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="metaclaw-wal", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Flush everything queued, seal the segment and stop the thread."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error(
                    "WAL writer still busy after %.0fs; closing without a final flush", timeout
                )

    def __enter__(self) -> WalWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pending(self) -> int:
        return self._queued

    @property
    def pending_bytes(self) -> int:
        return self._queued_bytes

    # -- appending -------------------------------------------------------------------------
    def submit(self, table: str, row: Row, *, wait_s: float = 0.0) -> Future[None]:
        """Queue one row; the future completes when it is on disk (or fails with the reason).

        Values are coerced to the table's schema here, so the WAL holds schema-shaped rows; a row
        that still does not fit is written as sent and quarantined by ingest (never lost). A full
        queue fails the future at once, or after waiting up to `wait_s` for room."""
        if self._closed:
            raise WalClosedError("the WAL writer is closed")
        spec = table_spec(table)  # an unknown table is a caller's bug: say so now
        with contextlib.suppress(RowError):
            row = coerce_row(spec, row)
        line = encode_line(table, row)
        fut: Future[None] = Future()
        # Running futures cannot be cancelled: a caller that stops waiting (timeout, cancelled
        # request) must not make the writer thread's set_result raise and kill the thread.
        fut.set_running_or_notify_cancel()
        if not self._reserve(len(line), wait_s):
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.error(
                    "WAL queue full (%d rows, %d bytes queued): %d append(s) refused so far; "
                    "the disk is slower than the appends",
                    self._queued,
                    self._queued_bytes,
                    self.stats.dropped,
                )
            fut.set_exception(
                WalFullError(
                    f"WAL queue is full ({self._queued} rows, {self._queued_bytes} bytes; limits "
                    f"{self.queue_max} rows, {self.queue_max_bytes} bytes): ingest or disk too slow"
                )
            )
            return fut
        self._queue.put((line, fut))
        return fut

    def _reserve(self, size: int, wait_s: float) -> bool:
        """Take room for one line (a line larger than the whole bound fits an empty queue)."""
        deadline = time.monotonic() + wait_s
        with self._room:
            while self._queued and (
                self._queued >= self.queue_max or self._queued_bytes + size > self.queue_max_bytes
            ):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._room.wait(left)
            self._queued += 1
            self._queued_bytes += size
            return True

    def _release(self, batch: list[_Item]) -> None:
        with self._room:
            self._queued -= len(batch)
            self._queued_bytes -= sum(len(line) for line, _ in batch)
            self._room.notify_all()

    def append(self, table: str, rows: list[Row], timeout: float | None = 30.0) -> None:
        """Blocking durable append of several rows (for flows, importers and tests); waits for
        room in the queue rather than failing when the writer is behind."""
        wait_s = 1e9 if timeout is None else timeout
        futures = [self.submit(table, row, wait_s=wait_s) for row in rows]
        for fut in futures:
            fut.result(timeout)

    async def append_async(self, table: str, row: Row, timeout: float) -> None:
        """Durable append from the event loop without blocking it."""
        await asyncio.wait_for(asyncio.wrap_future(self.submit(table, row)), timeout)

    # -- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # never die silently: every later append would hang
            log.exception("WAL writer thread crashed; appends will fail until restart")
            self._closed = True
            raise

    def _loop(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=min(self.rotate_s, 1.0))
            except queue.Empty:
                self._maybe_rotate()
                continue
            batch: list[_Item] = []
            if first is None:
                stop = True
            else:
                batch.append(first)
            while len(batch) < self.batch_max:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            if batch:
                self._commit(batch)
            self._maybe_rotate()
        if self._segment is not None:
            self._segment.seal()
            self._segment = None

    def _commit(self, batch: list[_Item]) -> None:
        try:
            self._write(batch)
        finally:
            self._release(batch)

    def _write(self, batch: list[_Item]) -> None:
        try:
            if self._segment is None:
                self._segment = _Segment(self.directory, self._on_segment_created)
            self._segment.write(b"".join(line for line, _ in batch))
        except Exception as exc:  # disk full, permissions: fail the waiters, keep running
            self.stats.errors += len(batch)
            log.error("WAL write failed for %d records: %s", len(batch), exc)
            self._abandon_segment()
            for _, fut in batch:
                fut.set_exception(exc)
            return
        self.stats.records_written += len(batch)
        self.stats.fsyncs += 1
        for _, fut in batch:
            fut.set_result(None)

    def _abandon_segment(self) -> None:
        """After a failed write the segment may end in a torn line; start afresh next time."""
        if self._segment is not None:
            with contextlib.suppress(OSError):
                self._segment.seal()
            self._segment = None

    def _maybe_rotate(self) -> None:
        """Seal a segment that is large or old, so ingest can take it while we write anew."""
        seg = self._segment
        if seg is None:
            return
        too_old = seg.size > 0 and time.monotonic() - seg.opened >= self.rotate_s
        if seg.size >= self.rotate_bytes or too_old:
            seg.seal()
            self.stats.segments_sealed += 1
            self._segment = None


def list_segments(directory: Path) -> list[Path]:
    if not directory.exists():
        return []
    return sorted(p for p in directory.iterdir() if p.name.endswith(SEGMENT_SUFFIX))


@contextlib.contextmanager
def claim_segment(path: Path) -> Any:
    """Yield an fd holding the segment's lock if no live writer owns it, else None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        yield None
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def collect_stale_staging(directory: Path, older_than_s: float) -> int:
    """Remove `.new` files a writer left when it died between creating and renaming a segment.

    Nothing is written to a segment before it is renamed in, so these are empty; the age check
    leaves alone a writer that is inside that short gap right now."""
    if not directory.exists():
        return 0
    cutoff = time.time() - max(older_than_s, 60.0)
    removed = 0
    for path in directory.glob(f"*{SEGMENT_SUFFIX}{STAGING_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed


def append_rows(directory: Path, table: str, rows: list[Row]) -> None:
    """Durably append rows from a short-lived writer (a flow run, an importer, a test)."""
    with WalWriter(directory) as wal:
        wal.append(table, rows)
