"""Importing logs into the ledger: streaming batches, durable appends, resume, periodic ingest.

Rows go to the WAL in batches (`append_rows`, one fsync per batch) and the ledger's ingest turns
them into Parquet; ingest drops ids it already has, so importing a file twice adds nothing.
Memory stays flat with history size: files are parsed one at a time as streams, at most one
batch of rows is held, and ingest runs whenever the WAL holds `replay.ingest_every_bytes`, so
the WAL (which ingest reads whole) never grows with the history. A small resume log under
`METACLAW_HOME/replay/` records each fully imported file with its size and mtime: after a crash
the next run skips those and starts again at the file that was in progress (its rows that did
land are dropped by ingest as duplicates).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from metaclaw.config import Settings
from metaclaw.ledger import append_rows, ingest
from metaclaw.ledger.wal import list_segments
from metaclaw.replay.detect import Source
from metaclaw.replay.model import (
    Feedback,
    Item,
    ParseOptions,
    Problem,
    Row,
    SessionDone,
    Turn,
)
from metaclaw.replay.openai_jsonl import parse_openai_jsonl
from metaclaw.replay.openclaw import parse_openclaw_jsonl
from metaclaw.replay.openclaw_sqlite import parse_sqlite
from metaclaw.replay.trajectory import parse_trajectory

PARSERS: dict[str, Callable[[Path, ParseOptions, int], Iterator[Item]]] = {
    "openclaw": parse_openclaw_jsonl,
    "openclaw-sqlite": parse_sqlite,
    "openclaw-trajectory": parse_trajectory,
    "openai": parse_openai_jsonl,
}
IMPORTED_TABLES = ("turns", "feedback")  # ingest also lands other flows' rows
BATCH_MESSAGES = 50_000
"""A batch is also flushed at this many request messages: every turn of a 5,000-message session
carries its whole context, and the WAL encodes a batch in one piece."""
MAX_PROBLEMS = 1000  # kept for the summary; beyond this they are only counted


def parse_source(source: Source, opts: ParseOptions) -> Iterator[Item]:
    """The items of one file. Timestamps missing from the log fall back to the file's mtime."""
    return PARSERS[source.format](Path(source.path), opts, source.mtime_ns // 1000)


@dataclass(frozen=True, slots=True)
class FileFailed(Problem):
    """The parser broke off: the file is not marked imported, so the next run retries it."""


def _guarded(source: Source, items: Iterator[Item]) -> Iterator[Item]:
    """A parser failing on something we did not foresee fails its file, not the import.

    Only parsing is guarded: a ledger write failure (disk full) still stops the import.
    """
    try:
        yield from items
    except Exception as exc:
        yield FileFailed(
            source.path,
            f"import failed ({type(exc).__name__}: {exc}); the file "
            "will be retried on the next run",
        )


def _wal_bytes(directory: Path) -> int:
    total = 0
    for segment in list_segments(directory):
        try:
            total += segment.stat().st_size
        except FileNotFoundError:  # ingested by someone else meanwhile
            continue
    return total


def parse_options(settings: Settings) -> ParseOptions:
    return ParseOptions(
        max_record_bytes=settings.replay.max_record_bytes,
        max_inline_image_bytes=settings.replay.max_inline_image_bytes,
    )


def replay_dir(settings: Settings) -> Path:
    return settings.paths.home / "replay"


class ResumeLog:
    """Append-only JSONL of files fully imported; safe for concurrent importers (flock)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "imported.jsonl"
        self._keys: set[str] | None = None

    def keys(self) -> set[str]:
        if self._keys is None:
            self._keys = set()
            if self.path.exists():
                for line in self.path.read_bytes().splitlines():
                    try:
                        self._keys.add(orjson.loads(line)["key"])
                    except (orjson.JSONDecodeError, KeyError, TypeError):
                        continue  # a torn last line from a crash: that file is imported again
        return self._keys

    def done(self, key: str) -> bool:
        return key in self.keys()

    def mark(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Record files as imported: one locked append and one fsync for all of them."""
        if not entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = b"".join(orjson.dumps({"key": key, **info}) + b"\n" for key, info in entries)
        # 0600: the log names the user's conversation files.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        self.keys().update(key for key, _ in entries)


@dataclass
class ImportSummary:
    """What an import did; summed over files, partitions and tasks."""

    files: int = 0
    resumed: int = 0  # files skipped: fully imported by an earlier run
    sessions: int = 0
    turns: int = 0
    feedback: int = 0
    before_since: int = 0  # turns older than `since`, left out on purpose
    skipped: int = 0  # records/lines skipped as unreadable (see problems)
    turns_lost: int = 0  # turns left out because their record or its context was unreadable
    failed_files: int = 0
    problems: list[str] = field(default_factory=list)
    ingested_rows: int = 0

    def note(self, problem: Problem | str) -> None:
        self.skipped += 1
        if isinstance(problem, Problem):
            self.turns_lost += problem.turns_lost
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(str(problem))

    def merge(self, other: ImportSummary) -> ImportSummary:
        for name in (
            "files",
            "resumed",
            "sessions",
            "turns",
            "feedback",
            "before_since",
            "skipped",
            "turns_lost",
            "failed_files",
            "ingested_rows",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        room = MAX_PROBLEMS - len(self.problems)
        self.problems.extend(other.problems[: max(room, 0)])
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImportSummary:
        return cls(**data)


class Importer:
    """Imports sources into the ledger of `settings`; one per run (or per flow task)."""

    def __init__(
        self,
        settings: Settings,
        *,
        since: int | None = None,
        resume: bool = True,
        on_progress: Callable[[ImportSummary, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self.since = since
        self.opts = parse_options(settings)
        self.resume = ResumeLog(replay_dir(settings)) if resume else None
        self.on_progress = on_progress
        self.summary = ImportSummary()
        self._turns: list[Row] = []
        self._feedback: list[Row] = []
        self._messages = 0  # request messages held by the pending turns
        self._done: list[tuple[str, dict[str, Any]]] = []  # files whose rows are all pending

    def _key(self, source: Source) -> str:
        return f"{source.key}|since={self.since}"

    def import_all(self, sources: Iterable[Source]) -> ImportSummary:
        for source in sources:
            self.import_source(source)
        self.finish()
        return self.summary

    def import_source(self, source: Source) -> None:
        """One file. Never raises for bad content: it becomes problems in the summary."""
        key = self._key(source)
        if self.resume is not None and self.resume.done(key):
            self.summary.resumed += 1
            self._progress(source.size)
            return
        sessions: set[str] = set()
        dropped: set[str] = set()
        turns = 0
        failed: Problem | None = None
        for item in _guarded(source, parse_source(source, self.opts)):
            if isinstance(item, Turn):
                if self.since is not None and item.row["ts_start"] < self.since:
                    self.summary.before_since += 1
                    dropped.add(item.row["turn_id"])
                    continue
                self._turns.append(item.row)
                self._messages += len(item.row["request"]["messages"])
                turns += 1
            elif isinstance(item, Feedback):
                if item.row["turn_id"] in dropped:
                    continue
                self._feedback.append(item.row)
            elif isinstance(item, SessionDone):
                sessions.add(item.session_id)
                dropped.clear()
            else:
                self.summary.note(item)
                if isinstance(item, FileFailed):
                    failed = item
            if (
                len(self._turns) + len(self._feedback) >= self.settings.replay.batch_rows
                or self._messages >= BATCH_MESSAGES
            ):
                self.flush()
        self.summary.sessions += len(sessions)
        if failed is not None:
            self.summary.failed_files += 1
        else:
            self.summary.files += 1
            # marked as imported by the flush that makes its last rows durable, not before
            self._done.append((key, {"turns": turns, "sessions": len(sessions)}))
        self._progress(source.size)

    def flush(self) -> None:
        """Make the pending rows durable: turns first, so feedback never precedes its turn."""
        wal = self.settings.paths.wal
        if self._turns:
            append_rows(wal, "turns", self._turns)
            self.summary.turns += len(self._turns)
        if self._feedback:
            append_rows(wal, "feedback", self._feedback)
            self.summary.feedback += len(self._feedback)
        written = bool(self._turns or self._feedback)
        self._turns, self._feedback, self._messages = [], [], 0
        if self.resume is not None:
            now = time.time()
            self.resume.mark([(key, {**info, "ts": now}) for key, info in self._done])
        self._done = []
        if written and _wal_bytes(wal) >= self.settings.replay.ingest_every_bytes:
            self.ingest()
        self._progress(0)

    def ingest(self) -> None:
        report = ingest(self.settings.paths, self.settings.ledger)
        self.summary.ingested_rows += sum(report.rows.get(t, 0) for t in IMPORTED_TABLES)

    def finish(self) -> None:
        """Flush what is pending and land everything in Parquet."""
        self.flush()
        self.ingest()

    def _progress(self, advance: int) -> None:
        if self.on_progress is not None:
            self.on_progress(self.summary, advance)
