"""Scoring throughput: turns judged per second against a stub judge with fixed latency, compared
with the concurrency-bound ideal measured in the same run.

    .venv/bin/python bench/score_throughput.py            # full run (concurrency 16 and 32)
    .venv/bin/python bench/score_throughput.py --quick    # smoke run (fewer turns)

Two processes: the stub judge (tests/stubs/judge_server.py, every reply delayed by --latency)
and this one, which seeds a temporary ledger with realistic turns (bench/_common.TurnFactory),
then runs one full scoring pass (`metaclaw.scoring.scorer.score`: ledger reads, next-state
assembly, implicit detectors, m votes per turn, reward writes). With c calls in flight, m votes
per turn and latency L, no scorer can beat c / (m·L) turns per second: that is the ideal.

Target (issue 4): end-to-end turns/s >= 0.8x the ideal at the configured concurrency.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    TurnFactory,
    add_wait_idle,
    load_warning,
    machine_summary,
    print_table,
    settle,
    write_json,
)
from metaclaw.config import JudgeSettings, Settings
from metaclaw.ledger import WalWriter
from metaclaw.scoring.scorer import score
from tests.stubs.judge_server import StubJudge

TARGET = 0.8


def run_config(
    stub: StubJudge, concurrency: int, votes: int, latency: float, turns: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="metaclaw-bench-score-") as tmp:
        home = Path(tmp)
        factory = TurnFactory()
        with WalWriter(home / "wal") as wal:
            wal.append("turns", [factory.row(i) for i in range(turns)])
        settings = Settings(
            home=home,
            judge=JudgeSettings(
                base_url=stub.base_url,
                model="stub-judge",
                votes=votes,
                concurrency=concurrency,
                session_idle_s=0,
                max_calls_per_run=turns * votes * 2,
                timeout_s=30,
            ),
        )
        stub.reset()
        start = time.perf_counter()
        report = score(settings)
        wall = time.perf_counter() - start
        stats = stub.stats()
    t = report.totals
    ideal = concurrency / (votes * latency)
    e2e = t.judged / wall
    judge_phase = t.judged / t.judge_seconds if t.judge_seconds else float("nan")
    return {
        "concurrency": concurrency,
        "votes": votes,
        "latency_s": latency,
        "turns": turns,
        "judged": t.judged,
        "calls": t.calls,
        "peak_in_flight": stats["peak_concurrency"],
        "wall_s": wall,
        "judge_s": t.judge_seconds,
        "ideal_turns_per_s": ideal,
        "turns_per_s": e2e,
        "judge_phase_turns_per_s": judge_phase,
        "ratio": e2e / ideal,
        "judge_phase_ratio": judge_phase / ideal,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="+",
        default=[JudgeSettings().concurrency, 32],
        help="the first is the one the target applies to (default: configured)",
    )
    parser.add_argument("--votes", type=int, default=JudgeSettings().votes)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument(
        "--seconds",
        type=float,
        default=15.0,
        help="ideal duration of each configuration (sets the turn count)",
    )
    parser.add_argument("--quick", action="store_true", help="4 s per configuration")
    parser.add_argument("--json", default=None, help="write the figures to this file")
    add_wait_idle(parser)
    args = parser.parse_args(argv)
    seconds = 4.0 if args.quick else args.seconds
    settle(args.wait_idle)
    warning = load_warning()
    if warning:
        print(warning)
    results = []
    with StubJudge(latency=args.latency) as stub:
        for c in args.concurrency:
            turns = math.ceil(seconds * c / (args.votes * args.latency))
            results.append(run_config(stub, c, args.votes, args.latency, turns))
    print(
        f"\nscore throughput: stub judge latency {args.latency * 1000:.0f} ms, "
        f"{args.votes} votes per turn, {os.cpu_count()} cores"
    )
    print_table(
        [
            "concurrency",
            "turns",
            "calls",
            "peak in flight",
            "wall s",
            "ideal t/s",
            "turns/s",
            "x ideal",
            "judge-phase x ideal",
        ],
        [
            [
                r["concurrency"],
                r["judged"],
                r["calls"],
                r["peak_in_flight"],
                r["wall_s"],
                r["ideal_turns_per_s"],
                r["turns_per_s"],
                r["ratio"],
                r["judge_phase_ratio"],
            ]
            for r in results
        ],
    )
    configured = results[0]  # the first concurrency is the configured one (judge.concurrency)
    ok = configured["ratio"] >= TARGET
    print(
        f"\ntarget: turns/s >= {TARGET:.0%} of c/(m·L) end to end at concurrency "
        f"{configured['concurrency']}: {configured['ratio']:.2f}x, {'MET' if ok else 'MISSED'}"
    )
    if args.json:
        write_json(args.json, {"machine": machine_summary(), "results": results})
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
