"""Faults of the durable ledger path (issue 16): each test reproduces one on a real disk with real
DuckDB and Parquet, and pins the fix."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest

from metaclaw.config import LedgerPaths, LedgerSettings
from metaclaw.ledger import WalWriter, ingest, query
from metaclaw.ledger.records import now_micros
from metaclaw.ledger.wal import list_segments

SETTINGS = LedgerSettings(compact_min_files=3, compact_grace_s=0)


def _turn(i: int, session: str = "s") -> dict:
    return {
        "turn_id": uuid.uuid4().hex,
        "session_id": session,
        "turn_index": i,
        "ts_start": now_micros(),
        "request": {"messages": [{"role": "user", "content": f"q{i}"}]},
        "completion_text": f"a{i}",
        "status": "ok",
    }


def _ids(paths: LedgerPaths, table: str = "turns", column: str = "turn_id") -> list[str]:
    return [r[0] for r in query(paths, f"SELECT {column} FROM {table}")[1]]


@pytest.fixture()
def paths(tmp_path: Path) -> LedgerPaths:
    return LedgerPaths(tmp_path / "home")


def test_ingest_in_the_segment_creation_gap_loses_nothing(paths: LedgerPaths) -> None:
    """The writer is paused right after creating its segment file and before locking it; an
    ingest runs in that gap. It must not take (and delete) the segment the writer goes on to
    fill: every acknowledged row is in the ledger afterwards."""
    in_gap, resume = threading.Event(), threading.Event()
    seen: list[list[str]] = []

    def pause(path: Path) -> None:
        seen.append([p.name for p in list_segments(paths.wal)])
        in_gap.set()
        assert resume.wait(10)

    turns = [_turn(i) for i in range(5)]
    with WalWriter(paths.wal, rotate_s=3600, on_segment_created=pause) as wal:
        futures = [wal.submit("turns", t) for t in turns]
        assert in_gap.wait(10)
        report = ingest(paths, SETTINGS)  # another process's ingest, running in the gap
        resume.set()
        for fut in futures:
            fut.result(10)  # acknowledged: durable
    assert report.segments == 0, f"ingest took the segment being created: {seen}"
    ingest(paths, SETTINGS)
    assert sorted(_ids(paths)) == sorted(t["turn_id"] for t in turns)


def _old_turns_file(paths: LedgerPaths, turn_id: str) -> None:
    """A Parquet file from before most `turns` columns existed (no `usage`, no
    `completion_text`), listed in the manifest as an upgrade finds it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from metaclaw.ledger.manifest import Manifest

    old = pa.table(
        {
            "turn_id": [turn_id],
            "session_id": ["s-old"],
            "ts_start": pa.array([now_micros()], pa.timestamp("us", tz="UTC")),
            "request": ['{"messages": []}'],
        }
    )
    rel = "turns/date=2026-01-01/part-old.parquet"
    (paths.ledger / rel).parent.mkdir(parents=True)
    pq.write_table(old, paths.ledger / rel)
    manifest = Manifest.load(paths.manifest)
    manifest.files["turns"] = [rel]
    manifest.save(paths.manifest)


def test_views_expose_every_schema_column_for_old_files_only(paths: LedgerPaths) -> None:
    """An upgraded ledger holding only files written before columns were added (no WAL rows):
    queries naming the new columns read NULL; queries on old columns work too."""
    _old_turns_file(paths, "old")
    assert _ids(paths) == ["old"]
    cols, got = query(
        paths,
        "SELECT turn_id, completion_text, usage, usage->>'$.prompt_tokens', date FROM turns",
    )
    assert got[0][:4] == ("old", None, None, None) and str(got[0][4]) == "2026-01-01"
    cols, _ = query(paths, "SELECT * FROM turns")
    from metaclaw.ledger.schemas import TURNS

    assert cols == [*TURNS.schema.names, "date"], "every schema column, in schema order"


def test_views_expose_every_schema_column_for_old_files_and_new_rows(paths: LedgerPaths) -> None:
    _old_turns_file(paths, "old")
    new = {**_turn(1), "usage": {"prompt_tokens": 7}}
    with WalWriter(paths.wal) as wal:
        wal.append("turns", [new])
    got = query(
        paths,
        "SELECT turn_id, completion_text, usage->>'$.prompt_tokens' FROM turns ORDER BY turn_id",
    )[1]
    assert sorted(got) == sorted([("old", None, None), (new["turn_id"], "a1", "7")])
    ingest(paths, SETTINGS)  # the new rows in Parquet next to the old file
    got = query(paths, "SELECT turn_id, usage->>'$.prompt_tokens' FROM turns")[1]
    assert sorted(got) == sorted([("old", None), (new["turn_id"], "7")])
