"""Which files to import and in which format: discovery, format detection, partitions.

Detection looks at content, not names: SQLite's magic header, then the first JSON records of a
JSON-lines file (an OpenClaw record has a known `type`, a trajectory event names its
`traceSchema`, an OpenAI line has a `messages` list). A path the user names that is none of
these is an error (`NotALogError`) with the reason; inside a directory, files that are not logs
(a README, OpenClaw's other SQLite databases, `manifest.json`) are passed over and listed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from metaclaw.replay.lines import decode_record, open_log, read_lines
from metaclaw.replay.model import FORMATS, NotALogError, Problem
from metaclaw.replay.openclaw import KNOWN_TYPES
from metaclaw.replay.openclaw_sqlite import SQLITE_MAGIC, connect_readonly
from metaclaw.replay.trajectory import SCHEMA

LOG_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz", ".sqlite", ".sqlite3", ".db")
SNIFF_LINES = 8


@dataclass(frozen=True, slots=True)
class Source:
    """One file to import, with what identifies this version of it (for resuming)."""

    path: str
    format: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> str:
        return f"{self.path}|{self.size}|{self.mtime_ns}|{self.format}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Source:
        return cls(**data)


def _sniff_record(record: dict[str, Any]) -> str | None:
    if record.get("traceSchema") == SCHEMA:
        return "openclaw-trajectory"
    if isinstance(record.get("messages"), list):
        return "openai"
    if record.get("type") in KNOWN_TYPES or ("role" in record and "content" in record):
        return "openclaw"
    return None


def detect_format(path: Path, max_record_bytes: int = 32 * 1024 * 1024) -> str:
    """The format of one file, or NotALogError saying why it is not a log."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise NotALogError(path, f"cannot be read ({exc.strerror or exc})") from None
    if head == SQLITE_MAGIC:
        connect_readonly(path).close()
        return "openclaw-sqlite"
    if not head:
        raise NotALogError(path, "empty file: nothing to import")
    reasons = []
    try:
        with open_log(path) as fh:
            for line in read_lines(fh, max_record_bytes):
                record = decode_record(line, f"line {line.number}", max_record_bytes)
                if record is None:
                    continue
                if isinstance(record, Problem):
                    reasons.append(str(record).removesuffix("; skipped"))
                else:
                    fmt = _sniff_record(record)
                    if fmt is not None:
                        return fmt
                    keys = ", ".join(sorted(record)[:8])
                    reasons.append(f"line {line.number}: a JSON object with keys {keys}")
                if len(reasons) >= SNIFF_LINES:
                    break
    except (OSError, EOFError) as exc:  # e.g. a .gz that is not gzip
        raise NotALogError(path, f"cannot be read ({exc})") from None
    detail = reasons[0] if reasons else "no JSON records"
    raise NotALogError(
        path,
        "not a conversation log (expected OpenClaw session JSONL, an OpenClaw SQLite "
        f"transcript store, a trajectory events.jsonl or OpenAI chat JSONL; {detail})",
    )


@dataclass
class Discovery:
    sources: list[Source]
    ignored: list[str]  # files inside directories that are not logs, with the reason
    errors: list[NotALogError]  # paths the user named that are not logs


def _source(path: Path, fmt: str) -> Source:
    st = path.stat()
    return Source(str(path.resolve()), fmt, st.st_size, st.st_mtime_ns)


def discover(
    paths: Sequence[str | Path], fmt: str = "auto", max_record_bytes: int = 32 * 1024 * 1024
) -> Discovery:
    """Every log file under `paths` (directories recursively, in a stable order)."""
    if fmt != "auto" and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; formats: auto, {', '.join(FORMATS)}")
    found = Discovery([], [], [])
    seen: set[str] = set()
    for given in paths:
        path = Path(given)
        if not path.exists():
            found.errors.append(NotALogError(path, "no such file or directory"))
            continue
        if path.is_dir():
            matched = False
            for file in _walk(path):
                try:
                    source = _source(
                        file, fmt if fmt != "auto" else detect_format(file, max_record_bytes)
                    )
                except NotALogError as exc:
                    found.ignored.append(str(exc))
                    continue
                matched = True
                if source.path not in seen:
                    seen.add(source.path)
                    found.sources.append(source)
            if not matched:
                found.errors.append(
                    NotALogError(
                        path,
                        "directory holds no conversation logs "
                        f"(looked for {', '.join(LOG_SUFFIXES)})",
                    )
                )
            continue
        try:
            source = _source(path, fmt if fmt != "auto" else detect_format(path, max_record_bytes))
        except NotALogError as exc:
            found.errors.append(exc)
            continue
        if source.path not in seen:
            seen.add(source.path)
            found.sources.append(source)
    return found


def _walk(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(LOG_SUFFIXES):
                yield Path(dirpath) / name


def partition(sources: Sequence[Source], max_files: int, max_bytes: int) -> list[list[Source]]:
    """Consecutive groups of at most `max_files` files and about `max_bytes` bytes each."""
    parts: list[list[Source]] = []
    current: list[Source] = []
    size = 0
    for source in sources:
        if current and (len(current) >= max_files or size + source.size > max_bytes):
            parts.append(current)
            current, size = [], 0
        current.append(source)
        size += source.size
    if current:
        parts.append(current)
    return parts
