"""Point lookups (what `POST /v1/feedback` asks): the same answers as SQL over the views, from
the WAL (active and sealed segments) and from Parquet, without decoding the whole ledger."""

from __future__ import annotations

import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from metaclaw.config import LedgerPaths, LedgerSettings
from metaclaw.ledger import WalWriter, ingest, query
from metaclaw.ledger.lookup import LOOKUP_COLUMNS, TurnRef, find_turn, session_has_completed_turn
from metaclaw.ledger.manifest import Manifest
from metaclaw.ledger.records import now_micros

SETTINGS = LedgerSettings(compact_min_files=2, compact_grace_s=0)


def _turn(session: str, status: str = "ok", **extra: object) -> dict:
    return {
        "turn_id": uuid.uuid4().hex,
        "session_id": session,
        "ts_start": now_micros(),
        "request": {"messages": [{"role": "user", "content": "hi"}]},
        "status": status,
        **extra,
    }


@pytest.fixture()
def paths(tmp_path: Path) -> LedgerPaths:
    return LedgerPaths(tmp_path / "home")


def test_lookups_agree_with_the_views_in_wal_and_parquet(paths: LedgerPaths) -> None:
    landed = _turn("s-parquet")
    failed_only = _turn("s-failed", status="upstream_error")
    with WalWriter(paths.wal) as wal:
        wal.append("turns", [landed, failed_only])
    ingest(paths, SETTINGS)
    sealed = _turn("s-sealed")
    # A row whose nested JSON mentions another turn's id must not count as that turn.
    decoy = _turn("s-decoy", request={"turn_id": "ghost", "session_id": "s-ghost"})
    with WalWriter(paths.wal) as wal:
        wal.append("turns", [sealed, decoy])
    active = _turn("s-active")
    with WalWriter(paths.wal, rotate_s=3600) as wal:
        wal.append("turns", [active])  # the segment is still locked by its writer
        for row in (landed, failed_only, sealed, active, decoy):
            assert find_turn(paths, row["turn_id"]) == TurnRef(
                row["turn_id"], row["session_id"], row["status"], "default"
            )
            sql = f"SELECT session_id FROM turns WHERE turn_id = '{row['turn_id']}'"
            got = query(paths, sql)[1]
            assert got == [(row["session_id"],)]
        assert find_turn(paths, "ghost") is None
        assert find_turn(paths, "no-such-turn") is None
        for session in ("s-parquet", "s-sealed", "s-active", "s-decoy"):
            assert session_has_completed_turn(paths, session, "default")
            assert not session_has_completed_turn(paths, session, "other-agent")
        for session in ("s-failed", "s-ghost", "nobody"):
            assert not session_has_completed_turn(paths, session, "default")


def test_parquet_files_carry_bloom_filters_on_lookup_columns(paths: LedgerPaths) -> None:
    """What keeps the Parquet side of a lookup from reading every row group: ingest and
    compaction write Bloom filters on the looked-up columns."""
    for _ in range(2):
        with WalWriter(paths.wal) as wal:
            wal.append("turns", [_turn("s") for _ in range(3)])
        ingest(paths, SETTINGS.model_copy(update={"compact_min_files": 100}))
    ingest(paths, SETTINGS)  # compacts the two files into one
    (rel,) = Manifest.load(paths.manifest).files["turns"]
    meta = pq.ParquetFile(paths.ledger / rel).metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    for name in LOOKUP_COLUMNS["turns"]:
        assert columns[name].bloom_filter_length, f"no Bloom filter on {name}"
    assert not columns["completion_text"].bloom_filter_length
