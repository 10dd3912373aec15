"""Ledger maintenance whose cost follows new data, not all data (issue 16, item 7)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from metaclaw.config import LedgerPaths, LedgerSettings
from metaclaw.ledger import WalWriter, ingest, query
from metaclaw.ledger.manifest import Manifest
from metaclaw.ledger.records import now_micros
from metaclaw.ledger.wal import list_segments

SETTINGS = LedgerSettings(compact_min_files=3, compact_grace_s=0)


def _turns(n: int) -> list[dict]:
    return [
        {"turn_id": uuid.uuid4().hex, "session_id": "s", "ts_start": now_micros(), "status": "ok"}
        for _ in range(n)
    ]


@pytest.fixture()
def paths(tmp_path: Path) -> LedgerPaths:
    return LedgerPaths(tmp_path / "home")


def _land(paths: LedgerPaths, rows: int = 5) -> None:
    with WalWriter(paths.wal) as wal:
        wal.append("turns", _turns(rows))
    ingest(paths, SETTINGS)


def _files(paths: LedgerPaths) -> list[str]:
    return Manifest.load(paths.manifest).files["turns"]


def test_compaction_does_not_rewrite_the_day_file_every_run(paths: LedgerPaths) -> None:
    """Size tiers: fresh files are merged among themselves; a merged file is merged again only
    with files of its own tier. Each row is rewritten O(log n) times, not once per run."""
    for _ in range(3):
        _land(paths)
    (first_merge,) = _files(paths)
    for _ in range(3):
        _land(paths)
    assert first_merge in _files(paths), "the earlier merge was rewritten with the new files"
    assert len(_files(paths)) == 2
    for _ in range(3):
        _land(paths)
    (second_tier,) = _files(paths)  # three files of the first tier merge into one
    assert second_tier != first_merge
    assert query(paths, "SELECT count(*), count(DISTINCT turn_id) FROM turns")[1] == [(45, 45)]


def test_ingest_lands_a_backlog_in_bounded_batches(paths: LedgerPaths) -> None:
    """A backlog of segments is landed a batch at a time (one publish each), so the memory of
    an ingest does not grow with the backlog."""
    for _ in range(4):
        with WalWriter(paths.wal) as wal:
            wal.append("turns", _turns(10))
    sizes = [p.stat().st_size for p in list_segments(paths.wal)]
    before = Manifest.load(paths.manifest).version
    settings = SETTINGS.model_copy(
        update={"ingest_batch_bytes": sizes[0] + sizes[1], "compact_min_files": 100}
    )
    report = ingest(paths, settings)
    assert report.segments == 4 and report.rows == {"turns": 40}
    manifest = Manifest.load(paths.manifest)
    assert len(manifest.files["turns"]) == 2, "two batches of two segments: one file each"
    assert manifest.version - before >= 2
    assert list_segments(paths.wal) == []
