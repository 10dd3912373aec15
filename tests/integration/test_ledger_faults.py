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


def test_malformed_rows_never_stop_readers_or_ingest(paths: LedgerPaths) -> None:
    """Content as a list of parts in a string column (some OpenAI-compatible servers reply so), a
    number sent as text, a WAL line naming a table this version does not know, and a row missing
    a required column: values are coerced to the schema; what cannot be is quarantined and
    reported, and every other row is read and ingested."""
    from metaclaw.ledger.records import encode_line

    parts = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    odd = {**_turn(0), "completion_text": parts, "turn_index": "3", "latency_ms": 12}
    good = _turn(1)
    with WalWriter(paths.wal) as wal:
        wal.append("turns", [odd, good])
    # Lines from another version of MetaClaw: an unknown table, a row without a required value.
    stray = paths.wal / "seg-20260101T000000000000-1-deadbeef.wal"
    stray.write_bytes(
        encode_line("nonesuch", {"x": 1})
        + encode_line("feedback", {"feedback_id": "f-no-value", "ts": now_micros()})
        + encode_line("feedback", {"feedback_id": "f-ok", "value": 1, "ts": now_micros()})
    )
    got = query(paths, "SELECT turn_id, completion_text, turn_index FROM turns")[1]
    assert sorted(got) == sorted([(odd["turn_id"], "Hello, world", 3), (good["turn_id"], "a1", 1)])
    assert _ids(paths, "feedback", "feedback_id") == ["f-ok"]
    report = ingest(paths, SETTINGS)
    assert report.rows == {"turns": 2, "feedback": 1} and report.dead_letters == 2
    assert list_segments(paths.wal) == [], "the segments are ingested, not stuck"
    assert sorted(_ids(paths)) == sorted([odd["turn_id"], good["turn_id"]])
    from metaclaw.ledger.deadletter import dead_letter_summary

    summary = dead_letter_summary(paths)
    assert summary.rows == 2
    reasons = " | ".join(summary.reasons)
    assert "unknown table 'nonesuch'" in reasons and "'value'" in reasons


def test_queue_is_bounded_by_bytes_when_the_disk_stalls(paths: LedgerPaths) -> None:
    """The writer is stalled (paused before it can write); appends beyond the byte bound fail
    loudly instead of piling up in memory, and every accepted row lands once it resumes."""
    from metaclaw.ledger.wal import WalFullError

    stalled, resume = threading.Event(), threading.Event()

    def stall(path: Path) -> None:
        stalled.set()
        assert resume.wait(10)

    big = "x" * 2000
    with WalWriter(
        paths.wal, rotate_s=3600, queue_max_bytes=20_000, on_segment_created=stall
    ) as wal:
        first = wal.submit("turns", {**_turn(0), "completion_text": big})
        assert stalled.wait(10)  # the writer holds the first row and cannot write it
        accepted, refused = [first], []
        for i in range(1, 40):
            fut = wal.submit("turns", {**_turn(i), "completion_text": big})
            (refused if fut.done() and fut.exception() else accepted).append(fut)
        assert 5 <= len(accepted) <= 11 and len(refused) == 40 - len(accepted)
        assert wal.pending_bytes <= 20_000 + 2500
        assert isinstance(refused[0].exception(), WalFullError)
        assert "WAL queue is full" in str(refused[0].exception())
        assert wal.stats.dropped == len(refused)
        resume.set()
        for fut in accepted:
            fut.result(10)
        wal.submit("turns", _turn(99)).result(10)  # room again once the disk catches up
    assert len(_ids(paths)) == len(accepted) + 1


def test_corrupt_line_keeps_the_rest_of_its_segment(paths: LedgerPaths) -> None:
    turns = [_turn(i) for i in range(4)]
    with WalWriter(paths.wal) as wal:
        wal.append("turns", turns)
    seg = list_segments(paths.wal)[0]
    lines = seg.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1][:20] + b"#" + lines[1][21:]  # one flipped byte: checksum mismatch
    seg.write_bytes(b"".join(lines))
    expected = sorted(t["turn_id"] for t in (turns[0], turns[2], turns[3]))
    assert sorted(_ids(paths)) == expected, "readers step over the damaged line"
    report = ingest(paths, SETTINGS)
    assert report.rows == {"turns": 3} and report.dead_letters == 1
    assert sorted(_ids(paths)) == expected
    from metaclaw.ledger.deadletter import dead_letter_summary

    assert dead_letter_summary(paths).reasons == ["1× corrupt WAL line: checksum mismatch"]


def test_private_files_are_0600(paths: LedgerPaths) -> None:
    """Segments and dead letters hold conversations: readable by their owner only."""
    from metaclaw.ledger.records import encode_line

    with WalWriter(paths.wal, rotate_s=3600) as wal:
        wal.append("turns", [_turn(0)])
        seg = list_segments(paths.wal)[0]
        assert seg.stat().st_mode & 0o777 == 0o600
    assert paths.wal.stat().st_mode & 0o077 == 0
    (paths.wal / "seg-20260101T000000000000-1-0badf00d.wal").write_bytes(
        encode_line("nonesuch", {"x": 1})
    )
    ingest(paths, SETTINGS)
    (dead,) = paths.dead_letters.glob("*.jsonl")
    assert dead.stat().st_mode & 0o777 == 0o600


def test_temp_files_of_failed_parquet_writes_are_collected(paths: LedgerPaths) -> None:
    """A Parquet write that fails leaves no `.tmp` behind; one left by a crash is collected."""
    import os

    import pyarrow as pa

    from metaclaw.ledger.storage import write_parquet_atomic

    target = paths.ledger / "turns" / "date=2026-01-01" / "part-x.parquet"
    target.mkdir(parents=True)  # the final rename fails after the temp file is written
    with pytest.raises(OSError):
        write_parquet_atomic(pa.table({"a": [1]}), target)
    assert [p.name for p in target.parent.iterdir()] == ["part-x.parquet"]
    target.rmdir()
    crashed = target.parent / ".part-y.parquet.tmp"
    crashed.write_bytes(b"PAR1 half")
    os.utime(crashed, (1, 1))  # older than the grace period
    ingest(paths, SETTINGS)
    assert not crashed.exists()


def test_import_resume_log_is_0600(tmp_path: Path) -> None:
    from metaclaw.replay.importer import ResumeLog

    log = ResumeLog(tmp_path / "replay")
    log.mark([("sessions/a.jsonl", {"turns": 1})])
    assert log.path.stat().st_mode & 0o777 == 0o600


@pytest.mark.slow  # a `metaclaw status` process: ~5-30 s on a busy 2-core machine
def test_status_reports_dead_letters(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from metaclaw.ledger.records import encode_line
    from tests.helpers import REPO, free_port

    paths = LedgerPaths(tmp_path)
    paths.wal.mkdir(parents=True)
    (paths.wal / "seg-20260101T000000000000-1-0badf00d.wal").write_bytes(
        encode_line("nonesuch", {"x": 1}) + encode_line("turns", _turn(0))
    )
    assert ingest(paths, SETTINGS).dead_letters == 1
    out = subprocess.run(
        [sys.executable, "-m", "metaclaw", "status"],
        env={
            **os.environ,
            "METACLAW_HOME": str(tmp_path),
            "METACLAW_CONFIG": str(tmp_path / "none.toml"),
            "METACLAW_PROXY__PORT": str(free_port()),
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "dead letters: 1 row(s) ingest could not store" in out.stdout
    assert "1× unknown table 'nonesuch'" in out.stdout


def test_invalid_json_text_in_an_old_file_reads_as_null(paths: LedgerPaths) -> None:
    """A JSON column holding text that is not JSON (written before values were coerced) must
    not make every query on the table fail."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from metaclaw.ledger.manifest import Manifest

    bad = pa.table(
        {
            "turn_id": ["t"],
            "session_id": ["s"],
            "ts_start": pa.array([now_micros()], pa.timestamp("us", tz="UTC")),
            "usage": ["prompt_tokens=3"],
            "request": ['{"messages": []}'],
        }
    )
    rel = "turns/date=2026-01-01/part-bad.parquet"
    (paths.ledger / rel).parent.mkdir(parents=True)
    pq.write_table(bad, paths.ledger / rel)
    manifest = Manifest()
    manifest.files["turns"] = [rel]
    manifest.save(paths.manifest)
    assert query(paths, "SELECT turn_id, usage, request->>'$.messages' FROM turns")[1] == [
        ("t", None, "[]")
    ]
