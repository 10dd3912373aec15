"""Dead letters: what ingest could not store, kept aside instead of blocking the ledger.

Why: a row that no coercion makes fit its table (a required value missing, a table this version
does not know, a WAL line damaged on disk) used to fail the whole batch on every ingest run, so
the WAL grew and every reader failed. Ingest now lands everything else and writes such rows here,
one JSONL file per WAL segment (`METACLAW_HOME/dead_letters/<segment>.jsonl`, mode 0600: rows
hold conversations), *before* the segment is deleted, so nothing acknowledged is lost: a fixed
row can be re-appended by hand. `metaclaw status` reports them.

Writing is idempotent: the file of a segment is replaced atomically, so an ingest retried after a
crash writes the same file again.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from metaclaw.ledger.coerce import json_default
from metaclaw.ledger.wal import fsync_dir

SUFFIX = ".jsonl"


def write_dead_letters(directory: Path, segment: str, entries: list[dict[str, Any]]) -> Path:
    """Durably store a segment's quarantined entries (temp file, fsync, rename)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{segment}{SUFFIX}"
    tmp = directory / f".{path.name}.tmp"
    payload = b"".join(
        orjson.dumps({"segment": segment, **e}, default=json_default) + b"\n" for e in entries
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(directory)
    return path


@dataclass
class DeadLetterSummary:
    directory: Path
    files: int = 0
    rows: int = 0
    reasons: list[str] = field(default_factory=list)  # most frequent first, with counts


def dead_letter_summary(paths: Any, top: int = 5) -> DeadLetterSummary:
    """How many rows are quarantined and the most frequent reasons (for `metaclaw status`)."""
    directory = Path(paths.dead_letters)
    summary = DeadLetterSummary(directory)
    if not directory.is_dir():
        return summary
    reasons: Counter[str] = Counter()
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        summary.files += 1
        for line in path.read_bytes().splitlines():
            summary.rows += 1
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                reasons["unreadable dead-letter line"] += 1
                continue
            reasons[str(entry.get("reason", "unknown"))] += 1
    summary.reasons = [f"{n}× {reason}" for reason, n in reasons.most_common(top)]
    return summary
