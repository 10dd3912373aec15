"""Scale-out: score-flow throughput on 1 vs 2 Dask workers, and ingest to S3 (moto) vs local disk.

    .venv/bin/python bench/scale_out.py            # full run
    .venv/bin/python bench/scale_out.py --quick    # smoke run (smaller)

Part 1 runs the real `score` flow (Prefect test server, `flows.task_runner = "dask"`) against the
stub judge (tests/stubs/judge_server.py) with a fixed latency per reply, on an in-process
`distributed.LocalCluster` of 1 and then 2 workers. The turns are spread over several 200-session
batches; each batch is one task whose judge calls are bounded by `judge.concurrency`, so a second
worker should nearly halve the wall time (the ideal ratio is min(workers, batches)).

Part 2 lands the same WAL rows with `metaclaw.ledger.ingest` into a local ledger and into an S3
ledger on moto (tests/stubs/s3_server.py, a Python process on this machine: its figure measures
our S3 code path and protocol overhead, not AWS's network latency).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from bench._common import machine_summary, print_table
from metaclaw.config import LedgerPaths, LedgerSettings
from metaclaw.ledger import WalWriter, ingest
from metaclaw.ledger.records import now_micros
from tests.helpers import free_port
from tests.stubs.judge_server import StubJudge
from tests.stubs.s3_server import StubS3


def _sessions(n: int) -> list[dict[str, Any]]:
    t0 = now_micros() - 3_600_000_000
    return [
        {
            "turn_id": f"b{i}",
            "session_id": f"bs{i}",
            "turn_index": 0,
            "ts_start": t0 + i,
            "ts_end": t0 + i + 1000,
            "status": "ok",
            "finish_reason": "stop",
            "request": {"model": "m", "messages": [{"role": "user", "content": f"q {i}"}]},
            "completion_text": f"a {i} [[votes:{('-1', '0', '+1')[i % 3]}]]",
        }
        for i in range(n)
    ]


def score_run(workers: int, sessions: int, judge: StubJudge, concurrency: int) -> dict[str, Any]:
    from distributed import LocalCluster

    from flows.score import score_flow

    with (
        tempfile.TemporaryDirectory(prefix="metaclaw-bench-scale-") as tmp,
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
    ):
        with WalWriter(Path(tmp) / "wal") as wal:
            wal.append("turns", _sessions(sessions))
        os.environ.update(
            {
                "METACLAW_HOME": tmp,
                "METACLAW_CONFIG": str(Path(tmp) / "none.toml"),
                "METACLAW_FLOWS__TASK_RUNNER": "dask",
                "METACLAW_FLOWS__DASK_ADDRESS": cluster.scheduler_address,
                "METACLAW_JUDGE__BASE_URL": judge.base_url,
                "METACLAW_JUDGE__MODEL": "stub-judge",
                "METACLAW_JUDGE__VOTES": "1",
                "METACLAW_JUDGE__CONCURRENCY": str(concurrency),
                "METACLAW_JUDGE__MAX_CALLS_PER_RUN": str(sessions * 2),
                "METACLAW_PROXY__PORT": str(free_port()),
            }
        )
        start = time.perf_counter()
        report = score_flow()
        wall = time.perf_counter() - start
    return {
        "workers": workers,
        "turns judged": report["judged"],
        "wall s": round(wall, 2),
        "turns/s": round(report["judged"] / wall, 1),
    }


def ingest_run(root: str | None, home: Path, rows: int, batches: int) -> dict[str, Any]:
    paths = LedgerPaths(home, root=root)
    settings = LedgerSettings(compact_min_files=10_000)  # measure landing, not compaction
    t0 = now_micros()
    elapsed = 0.0
    for b in range(batches):
        with WalWriter(paths.wal) as wal:
            wal.append(
                "turns",
                [
                    {
                        "turn_id": f"i{b}-{i}",
                        "session_id": f"s{i % 50}",
                        "turn_index": i,
                        "ts_start": t0 + i,
                        "completion_text": "x" * 400,
                    }
                    for i in range(rows)
                ],
            )
        start = time.perf_counter()
        report = ingest(paths, settings)
        elapsed += time.perf_counter() - start
        assert report.rows == {"turns": rows}, report
    return {
        "ledger root": "moto S3" if root else "local disk",
        "rows": rows * batches,
        "ingests": batches,
        "s per ingest": round(elapsed / batches, 3),
        "rows/s": round(rows * batches / elapsed),
    }


def _table(rows: list[dict[str, Any]]) -> None:
    print_table(list(rows[0]), [list(r.values()) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--latency", type=float, default=0.2, help="stub judge reply delay (s)")
    parser.add_argument("--concurrency", type=int, default=8, help="judge calls per batch")
    args = parser.parse_args()
    sessions = 400 if args.quick else 800  # 200-session batches: 2 or 4 tasks
    rows, batches = (2000, 3) if args.quick else (10_000, 5)
    print("machine:", machine_summary())

    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120), StubJudge(args.latency) as judge:
        scored = [score_run(w, sessions, judge, args.concurrency) for w in (1, 2)]
    ideal = min(2, sessions // 200)
    speedup = scored[0]["wall s"] / scored[1]["wall s"]
    print(
        f"\nScore flow, stub judge {args.latency * 1000:.0f} ms/reply, "
        f"{args.concurrency} calls in flight per batch, {sessions // 200} batches:"
    )
    _table(scored)
    print(f"speed-up 2 vs 1 workers: {speedup:.2f}x (ideal {ideal}x)")

    with tempfile.TemporaryDirectory(prefix="metaclaw-bench-ingest-") as tmp, StubS3() as s3:
        os.environ.update(s3.env)
        bucket = s3.bucket("bench")
        local = ingest_run(None, Path(tmp) / "local", rows, batches)
        remote = ingest_run(f"{bucket}/ledger", Path(tmp) / "s3", rows, batches)
    print(f"\nIngest, {rows} turns per ingest:")
    _table([local, remote])
    print(f"S3 (moto) / local throughput: {remote['rows/s'] / local['rows/s']:.2f}x")


if __name__ == "__main__":
    main()
