"""The ledger on object storage: moto's S3 API as a real server process (tests/stubs/s3_server.py).

ingest → score → evolve with `ledger.root = s3://…`; the Parquet files and versioned manifests
land in the bucket, not on local disk; concurrent ingests from separate processes (separate WALs,
as on separate machines) neither lose nor duplicate a turn.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import s3fs

from metaclaw.config import LedgerPaths, Settings
from metaclaw.ledger import WalWriter, ingest
from metaclaw.ledger.records import now_micros
from metaclaw.ledger.storage import FsspecStorage, open_storage
from tests.helpers import REPO, free_port, rows
from tests.integration.test_scoring_judge import chat
from tests.stubs.judge_server import StubJudge
from tests.stubs.s3_server import StubS3


@pytest.fixture()
def s3_env(s3_server: StubS3, monkeypatch: pytest.MonkeyPatch) -> StubS3:
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


def _fs(server: StubS3) -> s3fs.S3FileSystem:
    return s3fs.S3FileSystem(
        endpoint_url=server.url,
        use_listings_cache=False,
        key=server.env["AWS_ACCESS_KEY_ID"],
        secret=server.env["AWS_SECRET_ACCESS_KEY"],
    )


def test_s3_ingest_score_evolve(
    prefect_harness: str, home: Path, s3_env: StubS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.evolve import evolve_flow
    from flows.ingest import ingest_flow
    from flows.score import score_flow

    root = s3_env.bucket("ledger-e2e") + "/prod/ledger"
    monkeypatch.setenv("METACLAW_LEDGER__ROOT", root)
    settings = Settings()
    paths = settings.paths
    assert paths.root == root and isinstance(open_storage(paths), FsspecStorage)
    turns = chat(
        "s3",
        [
            ("What is the capital of Italy?", "Milan [[votes:-1,-1,-1]]"),
            ("No, I meant the capital city", "Rome [[votes:+1,+1,0]]"),
        ],
    )
    with WalWriter(paths.wal) as wal:
        wal.append("turns", turns)

    first = ingest_flow()
    assert first["rows"] == {"turns": 2} and first["segments"] == 1
    fs = _fs(s3_env)
    keys = fs.find("ledger-e2e/prod/ledger")
    assert [k for k in keys if "/turns/date=" in k and k.endswith(".parquet")], keys
    assert any(k.endswith("_manifest/00000000000000000001.json") for k in keys), keys
    assert not list(paths.ledger.rglob("*.parquet")), "nothing lands on local disk"
    assert not list(paths.wal.glob("*.wal")), "the WAL was ingested and deleted"
    versions = len(fs.ls("ledger-e2e/prod/ledger/_manifest"))
    assert ingest_flow()["total_rows"] == 0
    assert len(fs.ls("ledger-e2e/prod/ledger/_manifest")) == versions, "re-run publishes nothing"

    with StubJudge() as judge:
        monkeypatch.setenv("METACLAW_JUDGE__BASE_URL", judge.base_url)
        monkeypatch.setenv("METACLAW_JUDGE__MODEL", "stub-judge")
        monkeypatch.setenv("METACLAW_PROXY__PORT", str(free_port()))
        scored = score_flow()
    assert scored["judged"] == 2 and scored["calls"] == 6
    assert ingest_flow()["rows"]["rewards"] == scored["rewards_written"] > 2
    assert [k for k in fs.find("ledger-e2e/prod/ledger/rewards") if k.endswith(".parquet")]
    rewards = {r["turn_id"]: r["reward"] for r in rows(paths, "SELECT * FROM turn_rewards")}
    assert rewards == {"s3-0": -1.0, "s3-1": 1.0}

    evolved = evolve_flow()  # no critic configured: efficacy over the S3 ledger, then skips
    assert "skipped_reason" in evolved
    assert evolved["turns"] == 2, "efficacy read both rewarded turns from the bucket"

    # A second machine (another home, so another WAL) reads the same ledger from the bucket.
    other = LedgerPaths(home.parent / "machine-b", root=root)
    assert rows(other, "SELECT count(*) AS n FROM turns") == [{"n": 2}]


def test_manifest_versions_are_published_by_conditional_put(s3_env: StubS3, tmp_path: Path) -> None:
    root = s3_env.bucket("ledger-cas") + "/x"
    a = FsspecStorage(root, tmp_path / "a.lock")
    b = FsspecStorage(root, tmp_path / "b.lock")
    stale = b.load_manifest()
    mine = a.load_manifest()
    mine.files["turns"] = ["turns/date=2026-01-01/part-a.parquet"]
    a.publish(mine)
    stale.files["turns"] = ["turns/date=2026-01-01/part-b.parquet"]
    from metaclaw.ledger.storage import ManifestConflictError

    with pytest.raises(ManifestConflictError):
        b.publish(stale)  # S3 refused the second `If-None-Match: *` put of version 1
    assert stale.version == 0, "a refused publish leaves the caller's version unchanged"
    assert b.load_manifest().files == mine.files, "the winner's manifest is intact"


def test_lancedb_native_s3(s3_env: StubS3, tmp_path: Path) -> None:
    """The skills location: LanceDB's own object store, configured from the AWS environment."""
    import lancedb

    from metaclaw.ledger.storage import lancedb_storage_options

    uri = s3_env.bucket("skills") + "/library"
    settings = Settings(home=tmp_path, ledger={"skills_root": uri})
    assert settings.paths.skills_uri == uri
    options = lancedb_storage_options(uri)
    assert options["endpoint"] == s3_env.url and options["allow_http"] == "true"
    db = lancedb.connect(uri, storage_options=options)
    db.create_table("skills", data=[{"name": "cite-sources", "vector": [0.1, 0.2, 0.3]}])
    again = lancedb.connect(uri, storage_options=options).open_table("skills")
    assert again.search([0.1, 0.2, 0.3]).limit(1).to_list()[0]["name"] == "cite-sources"
    assert any(k.endswith(".lance") for k in _fs(s3_env).find("skills/library"))
    assert lancedb_storage_options(str(tmp_path)) == {}


WRITER = textwrap.dedent(
    """
    import json, sys
    from metaclaw.config import LedgerPaths, LedgerSettings
    from metaclaw.ledger import WalWriter, ingest
    home, root, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    paths = LedgerPaths(home, root=root)
    settings = LedgerSettings(compact_min_files=4)
    conflicts = 0
    for batch in spec:
        with WalWriter(paths.wal) as wal:
            wal.append("turns", batch)
        report = ingest(paths, settings)
        conflicts += report.conflicts
    print(json.dumps({"conflicts": conflicts}))
    """
)


@pytest.mark.slow
def test_concurrent_writers_never_lose_or_duplicate(s3_env: StubS3, tmp_path: Path) -> None:
    """Four processes with their own WALs ingest into one S3 ledger at once, in rounds; half of
    the turns are sent by two writers (a retried backfill on two machines). Compaction runs
    concurrently too (compact_min_files=4)."""
    root = s3_env.bucket("ledger-race") + "/ledger"
    writers, rounds, per_round = 4, 6, 25
    ts = now_micros()
    expected: set[str] = set()
    procs = []
    for w in range(writers):
        spec = []
        for r in range(rounds):
            batch = []
            for i in range(per_round):
                # even i: shared with the neighbour writer; odd i: this writer's own turn
                owner = w - w % 2 if i % 2 == 0 else w
                tid = f"t-{owner}-{r}-{i}"
                expected.add(tid)
                batch.append(
                    {
                        "turn_id": tid,
                        "session_id": f"s{owner}",
                        "turn_index": i,
                        "ts_start": ts + r * 1000 + i,
                    }
                )
            spec.append(batch)
        env = {**os.environ, **s3_env.env, "PYTHONPATH": str(REPO)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(tmp_path / f"home{w}"), root, json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=REPO,
            )
        )
    conflicts = 0
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        conflicts += json.loads(out.strip().splitlines()[-1])["conflicts"]
    reader = LedgerPaths(tmp_path / "reader", root=root)
    found = rows(reader, "SELECT turn_id, count(*) AS n FROM turns GROUP BY turn_id")
    assert {r["turn_id"] for r in found} == expected, "no turn lost"
    assert all(r["n"] == 1 for r in found), "no turn duplicated"
    # The raw Parquet files the manifest lists hold every turn exactly once as well (the view
    # does not dedupe Parquet rows; this is what ingest guarantees).
    store = open_storage(reader)
    listed = store.load_manifest().files["turns"]
    ids = [t for rel in listed for t in store.read_table(rel).column("turn_id").to_pylist()]
    assert sorted(ids) == sorted(expected)
    print(f"manifest conflicts resolved by retry: {conflicts}")


def test_local_ingest_unchanged_with_no_root(home: Path) -> None:
    """No `ledger.root`: the classic layout (manifest file next to the Parquet, no versions)."""
    paths = Settings().paths
    assert paths.root == str(home / "ledger") and paths.ledger == home / "ledger"
    with WalWriter(paths.wal) as wal:
        wal.append(
            "turns",
            [
                {
                    "turn_id": uuid.uuid4().hex,
                    "session_id": "s",
                    "turn_index": 0,
                    "ts_start": now_micros(),
                }
            ],
        )
    assert ingest(paths, Settings().ledger).rows == {"turns": 1}
    assert paths.manifest.exists() and not (paths.ledger / "_manifest").exists()
