"""The ledger manifest: which Parquet files are live, committed by one atomic rename.

Readers take their file list from here instead of globbing, so a half-written file, a file being
compacted away, or an empty table never reaches a query. Ingest and compaction change several
tables at once; one manifest for all tables makes each change all-or-nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from metaclaw.ledger.wal import fsync_dir


@dataclass
class Manifest:
    version: int = 0
    files: dict[str, list[str]] = field(default_factory=dict)  # table -> paths under ledger/
    segments: list[str] = field(default_factory=list)  # ingested WAL segments not yet deleted
    trash: dict[str, float] = field(default_factory=dict)  # replaced file -> when (epoch s)

    @classmethod
    def load(cls, path: Path) -> Manifest:
        try:
            data = orjson.loads(path.read_bytes())
        except FileNotFoundError:
            return cls()
        return cls(
            version=data["version"],
            files={k: list(v) for k, v in data["files"].items()},
            segments=list(data["segments"]),
            trash=dict(data.get("trash", {})),
        )

    def save(self, path: Path) -> None:
        """Write a new version atomically: temp file, fsync, rename, fsync the directory."""
        self.version += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        payload = orjson.dumps(
            {
                "version": self.version,
                "files": self.files,
                "segments": self.segments,
                "trash": self.trash,
            },
            option=orjson.OPT_INDENT_2,
        )
        try:
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            self.version -= 1  # not published
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)

    def replace_files(self, table: str, old: list[str], new: list[str]) -> None:
        """Swap files of a table; the old ones go to the trash for in-flight readers."""
        gone = set(old)
        self.files[table] = [f for f in self.files.get(table, []) if f not in gone] + new
        now = time.time()
        for f in old:
            self.trash[f] = now


class LedgerBusyError(RuntimeError):
    pass


@contextlib.contextmanager
def ledger_lock(path: Path, timeout: float = 60.0) -> Iterator[None]:
    """One ingest/compaction at a time across processes (the kernel frees it if we die)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LedgerBusyError(
                        f"another ingest holds {path} for more than {timeout:.0f}s"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)
