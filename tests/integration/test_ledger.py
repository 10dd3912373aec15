"""The ledger on a real disk: WAL durability, ingest idempotence, compaction, DuckDB views."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from metaclaw.config import LedgerPaths, LedgerSettings
from metaclaw.ledger import WalWriter, ingest, query
from metaclaw.ledger.manifest import Manifest
from metaclaw.ledger.records import now_micros
from metaclaw.ledger.wal import list_segments
from tests.helpers import rows

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


def _count(paths: LedgerPaths, table: str = "turns") -> int:
    return query(paths, f"SELECT count(*) FROM {table}")[1][0][0]


@pytest.fixture()
def paths(tmp_path: Path) -> LedgerPaths:
    return LedgerPaths(tmp_path / "home")


def test_empty_ledger_has_every_view(paths: LedgerPaths) -> None:
    for table in (
        "turns",
        "feedback",
        "rewards",
        "diagnoses",
        "skill_events",
        "train_steps",
        "checkpoints",
    ):
        assert _count(paths, table) == 0


def test_rows_visible_before_and_after_ingest(paths: LedgerPaths) -> None:
    with WalWriter(paths.wal, rotate_s=3600) as wal:
        wal.append("turns", [_turn(i) for i in range(5)])
        assert _count(paths) == 5, "WAL rows are queryable at once"
        report = ingest(paths, SETTINGS)
        assert report.segments == 0 and report.active_segments == 1, "active segment left alone"
    report = ingest(paths, SETTINGS)
    assert report.segments == 1 and report.rows == {"turns": 5}
    assert list_segments(paths.wal) == []
    got = rows(
        paths,
        "SELECT turn_index, request->>'$.messages[0].content' AS q, date "
        "FROM turns ORDER BY turn_index",
    )
    assert [r["q"] for r in got] == [f"q{i}" for i in range(5)]
    assert str(got[0]["date"]) == time.strftime("%Y-%m-%d", time.gmtime())
    files = list((paths.ledger / "turns").glob("date=*/part-*.parquet"))
    assert len(files) == 1


def test_ingest_is_idempotent_and_dedupes_ids(paths: LedgerPaths) -> None:
    turns = [_turn(i) for i in range(10)]
    with WalWriter(paths.wal) as wal:
        wal.append("turns", turns)
    ingest(paths, SETTINGS)
    assert ingest(paths, SETTINGS).total_rows == 0, "re-running writes nothing new"
    with WalWriter(paths.wal) as wal:  # a re-import of the same ids, plus one new
        wal.append("turns", [*turns[:4], _turn(99)])
    assert _count(paths) == 11, "the view hides WAL duplicates of ingested ids"
    report = ingest(paths, SETTINGS)
    assert report.rows == {"turns": 1} and report.duplicates == 4
    assert _count(paths) == 11


def test_crash_between_commit_and_segment_delete(paths: LedgerPaths) -> None:
    with WalWriter(paths.wal) as wal:
        wal.append("turns", [_turn(i) for i in range(3)])
    seg = list_segments(paths.wal)[0]
    saved = seg.read_bytes()
    ingest(paths, SETTINGS)
    seg.write_bytes(saved)  # as if the process died right after the manifest commit
    assert _count(paths) == 3, "a known segment's rows are not shown twice"
    report = ingest(paths, SETTINGS)
    assert report.total_rows == 0 and not seg.exists()
    assert _count(paths) == 3


def test_torn_tail_is_dropped_not_fatal(paths: LedgerPaths) -> None:
    with WalWriter(paths.wal) as wal:
        wal.append("turns", [_turn(i) for i in range(3)])
    seg = list_segments(paths.wal)[0]
    with open(seg, "ab") as fh:
        fh.write(b'0badc0de {"t": "turns", "r": {"turn_')  # a crash mid-write
    assert _count(paths) == 3
    assert ingest(paths, SETTINGS).rows == {"turns": 3}


def test_compaction_keeps_every_row_once(paths: LedgerPaths) -> None:
    for batch in range(4):
        with WalWriter(paths.wal) as wal:
            wal.append("turns", [_turn(batch * 10 + i) for i in range(10)])
            wal.append(
                "feedback", [{"feedback_id": uuid.uuid4().hex, "value": 1.0, "ts": now_micros()}]
            )
        ingest(paths, SETTINGS.model_copy(update={"compact_min_files": 100}))
    assert len(Manifest.load(paths.manifest).files["turns"]) == 4
    report = ingest(paths, SETTINGS)
    assert report.compacted_files == 8  # 4 turns files + 4 feedback files
    manifest = Manifest.load(paths.manifest)
    assert len(manifest.files["turns"]) == 1 and len(manifest.files["feedback"]) == 1
    assert _count(paths) == 40 and _count(paths, "feedback") == 4
    assert query(paths, "SELECT count(DISTINCT turn_id) FROM turns")[1][0][0] == 40
    leftover = sorted((paths.ledger / "turns").glob("date=*/*.parquet"))
    assert len(leftover) == 1, "replaced files are deleted after the grace period (0 here)"


def test_schema_evolution_reads_old_files(paths: LedgerPaths) -> None:
    """A file written before a column existed reads it as NULL (union_by_name)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    old = pa.table(
        {
            "turn_id": ["old"],
            "session_id": ["s"],
            "ts_start": pa.array([now_micros()], pa.timestamp("us", tz="UTC")),
        }
    )
    rel = "turns/date=2026-01-01/part-old.parquet"
    (paths.ledger / rel).parent.mkdir(parents=True)
    pq.write_table(old, paths.ledger / rel)
    manifest = Manifest()
    manifest.files["turns"] = [rel]
    manifest.save(paths.manifest)
    with WalWriter(paths.wal) as wal:
        wal.append("turns", [_turn(1)])
    got = rows(paths, "SELECT turn_id, completion_text FROM turns ORDER BY turn_id")
    assert len(got) == 2 and {"turn_id": "old", "completion_text": None} in got


WRITER = textwrap.dedent(
    """
    import sys, uuid
    from pathlib import Path
    from metaclaw.ledger import WalWriter
    from metaclaw.ledger.records import now_micros
    wal = WalWriter(Path(sys.argv[1]), rotate_s=0.2).start()
    i = 0
    while True:
        tid = uuid.uuid4().hex
        wal.submit("turns", {"turn_id": tid, "session_id": "k", "turn_index": i,
                             "ts_start": now_micros()}).result()
        print(tid, flush=True)  # acknowledged: durable
        i += 1
    """
)


def test_kill9_writer_loses_no_acknowledged_row(paths: LedgerPaths) -> None:
    """Every row acknowledged before a kill -9 is in the ledger after it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(paths.wal)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    acked = [proc.stdout.readline().strip()]  # the clock starts once the writer runs
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        acked.append(proc.stdout.readline().strip())
        if len(acked) % 200 == 0:
            ingest(paths, SETTINGS)  # ingest sealed segments while the writer runs
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    acked += [line.strip() for line in proc.stdout if line.strip()]
    assert len(acked) > 100
    ingest(paths, SETTINGS)
    stored = {r["turn_id"] for r in rows(paths, "SELECT turn_id FROM turns")}
    assert set(acked) <= stored
    assert _count(paths) == len(stored), "no duplicates"
    assert list_segments(paths.wal) == [], "a dead writer's segment is ingested"


def test_wal_failure_fails_the_future_not_the_process(tmp_path: Path) -> None:
    wal_dir = tmp_path / "wal"
    with WalWriter(wal_dir, rotate_s=0.1) as wal:
        wal.append("turns", [_turn(0)])
        time.sleep(0.5)  # the idle segment is sealed; the next write needs a new file
        moved = tmp_path / "moved"
        wal_dir.rename(moved)
        wal_dir.write_text("not a directory")
        with pytest.raises(NotADirectoryError):
            wal.append("turns", [_turn(1)], timeout=5)
        assert wal.stats.errors == 1
        wal_dir.unlink()
        moved.rename(wal_dir)
        wal.append("turns", [_turn(2)], timeout=5)  # the writer recovers
    assert _count(LedgerPaths(tmp_path)) == 2


def test_json_columns_are_json(paths: LedgerPaths) -> None:
    with WalWriter(paths.wal) as wal:
        wal.append("turns", [{**_turn(0), "usage": {"prompt_tokens": 3}}])
    got = rows(paths, "SELECT usage->>'$.prompt_tokens' AS p, typeof(request) AS t FROM turns")
    assert got == [{"p": "3", "t": "JSON"}]
    assert json.loads(rows(paths, "SELECT request FROM turns")[0]["request"])["messages"]


def test_a_caller_giving_up_never_kills_the_writer(paths: LedgerPaths) -> None:
    """Timeouts/cancellations of waiters (what a slow disk causes in the proxy) are harmless."""
    import asyncio

    async def main(wal: WalWriter) -> None:
        tasks = [asyncio.create_task(wal.append_async("turns", _turn(i), 5)) for i in range(200)]
        await asyncio.sleep(0)
        for task in tasks[::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await wal.append_async("turns", _turn(999), 5)  # the writer is still alive

    with WalWriter(paths.wal) as wal:
        asyncio.run(main(wal))
        assert wal.stats.errors == 0
    assert _count(paths) == 201, "cancelled waiters' rows are still written"
