"""Fault injection: the ledger on a real 2 MB tmpfs that fills up. The writer fails loudly (the
waiting caller gets ENOSPC), keeps running, loses no acknowledged row, and resumes once space
returns; an ingest on the full disk fails without leaving temp files or losing segments."""

from __future__ import annotations

import errno
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from metaclaw.config import LedgerPaths, LedgerSettings
from metaclaw.ledger import WalWriter, ingest, query
from metaclaw.ledger.records import now_micros
from metaclaw.ledger.wal import list_segments

SETTINGS = LedgerSettings(compact_grace_s=0)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs here (needs root/CAP_SYS_ADMIN): "
                    f"{done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _turn(i: int) -> dict:
    return {"turn_id": uuid.uuid4().hex, "session_id": "s", "turn_index": i,
            "ts_start": now_micros(), "status": "ok", "completion_text": "x" * 900}


def _stored(paths: LedgerPaths) -> list[str]:
    return [r[0] for r in query(paths, "SELECT turn_id FROM turns")[1]]


def test_disk_full_fails_loudly_loses_nothing_and_resumes(small_disk: Path) -> None:
    paths = LedgerPaths(small_disk / "home")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024))  # what we delete to give space back
    acked: list[str] = []
    with WalWriter(paths.wal, rotate_s=3600) as wal:
        failure: BaseException | None = None
        for i in range(5000):
            row = _turn(i)
            try:
                wal.submit("turns", row).result(10)
            except OSError as exc:
                failure = exc
                break
            acked.append(row["turn_id"])
        assert isinstance(failure, OSError) and failure.errno == errno.ENOSPC
        assert 100 < len(acked) < 1100 and wal.stats.errors == 1
        with pytest.raises(OSError):  # still full: the next append fails too, loudly
            wal.submit("turns", _turn(-1)).result(10)

        with pytest.raises(OSError):  # ingest cannot write Parquet on the full disk
            ingest(paths, SETTINGS)
        leftovers = [p.name for p in paths.ledger.rglob("*.tmp")]
        assert leftovers == [], "a failed Parquet write leaves no temp file"
        assert list_segments(paths.wal), "the segments are kept for the next ingest"
        assert sorted(_stored(paths)) == sorted(acked), "readers still see every acked row"

        filler.unlink()  # space returns
        later = [_turn(10_000 + i) for i in range(20)]
        wal.append("turns", later, timeout=10)  # the writer resumed on its own
        acked += [r["turn_id"] for r in later]
    report = ingest(paths, SETTINGS)
    assert report.total_rows == len(acked)
    stored = _stored(paths)
    assert sorted(stored) == sorted(acked), "every acknowledged row exactly once, nothing else"
    assert list_segments(paths.wal) == []
