"""Property: under any interleaving of append, rotate, ingest, compact, crash-replay and read,
every acknowledged row is read exactly once (hypothesis, real WAL files, Parquet and DuckDB)."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule

from metaclaw.config import LedgerPaths, LedgerSettings
from metaclaw.ledger import WalWriter, ingest, query
from metaclaw.ledger.records import now_micros
from metaclaw.ledger.wal import list_segments

NO_COMPACTION = LedgerSettings(compact_min_files=1000, compact_grace_s=0, ingest_batch_bytes=1)
COMPACTION = LedgerSettings(compact_min_files=2, compact_grace_s=0)


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.home = Path(tempfile.mkdtemp(prefix="metaclaw-prop-"))
        self.paths = LedgerPaths(self.home)
        self.wal = WalWriter(self.paths.wal, rotate_s=3600).start()
        self.acked: dict[str, dict] = {}
        self.sealed_copies: dict[str, bytes] = {}  # segment name -> bytes, for crash replays

    @rule(n=st.integers(1, 4), reappend=st.booleans(), odd_type=st.booleans())
    def append(self, n: int, reappend: bool, odd_type: bool) -> None:
        rows = [
            {
                "turn_id": uuid.uuid4().hex,
                "session_id": "s",
                "ts_start": now_micros(),
                "status": "ok",
                "turn_index": "1" if odd_type else 1,
            }
            for _ in range(n)
        ]
        if reappend and self.acked:  # a retried import: an acknowledged id once more
            rows.append(next(iter(self.acked.values())))
        self.wal.append("turns", rows, timeout=30)
        self.acked.update((r["turn_id"], r) for r in rows)

    @rule()
    def rotate(self) -> None:
        self.wal.close()
        for seg in list_segments(self.paths.wal):
            self.sealed_copies.setdefault(seg.name, seg.read_bytes())
        self.wal = WalWriter(self.paths.wal, rotate_s=3600).start()

    @rule()
    def ingest_segments(self) -> None:
        ingest(self.paths, NO_COMPACTION)

    @rule()
    def compact(self) -> None:
        ingest(self.paths, COMPACTION)

    @precondition(lambda self: self.sealed_copies)
    @rule(data=st.data())
    def crash_replay(self, data: st.DataObject) -> None:
        """A segment reappears as if ingest died between its manifest commit and the delete."""
        name = data.draw(st.sampled_from(sorted(self.sealed_copies)))
        path = self.paths.wal / name
        if not path.exists():
            path.write_bytes(self.sealed_copies[name])

    @rule()
    def read(self) -> None:
        counts = dict(query(self.paths, "SELECT turn_id, count(*) FROM turns GROUP BY 1")[1])
        assert set(counts) == set(self.acked), "acknowledged rows missing or unknown rows read"
        assert set(counts.values()) <= {1}, "a row read more than once"

    def teardown(self) -> None:
        try:
            self.wal.close()
            ingest(self.paths, COMPACTION)
            self.read()
        finally:
            shutil.rmtree(self.home, ignore_errors=True)


LedgerMachine.TestCase.settings = settings(
    max_examples=10,
    stateful_step_count=8,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerExactlyOnce = pytest.mark.slow(LedgerMachine.TestCase)  # ~5 s idle, 25 s busy
