"""Reward model triage: judge calls saved, and what it costs in agreement with human labels.

    .venv/bin/python bench/reward_model.py            # 4,000 turns in 16 waves
    .venv/bin/python bench/reward_model.py --quick    # 1,600 turns in 8 waves

Both arms score the same conversations (bench/reward_corpus.py: every turn has a human label)
in the same waves, through the real `score` path (ledger, DuckDB views, judge over HTTP):

- **judge only** (`reward_model.enabled = false`): every turn gets m = 3 judge votes;
- **triage**: the reward model retrains from the ledger's labels as they land and takes the
  turns it is confident about; the judge gets the rest plus the audit share (an uncertain turn
  gets one vote first, and the rest of the panel only when that vote disagrees with the
  model's lean: `reward_model.one_vote_confirms`).

The judge is a stand-in served over HTTP that reads the question and the reply and votes the
truth, each vote wrong with probability `--judge-error` (0.2: the majority of 3 is right ~90 %
of the time); both arms get identical votes for identical prompts. 5 % of turns carry explicit
user feedback (a label for training; agreement is counted on the other turns). Also measured:
training time per 10k labels (features + fit) and scoring throughput (features + predict).

Target (issue 19): >= 60 % fewer judge calls at <= 3 points lower agreement with human labels
than judging every turn.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench._common import machine_summary, print_table, write_json
from bench.reward_corpus import NoisyJudge, Turn, sessions
from metaclaw.config import JudgeSettings, RewardModelSettings, Settings
from metaclaw.ledger import WalWriter
from metaclaw.ledger.reader import connect
from metaclaw.ledger.records import now_micros
from metaclaw.scoring.adaptive import embedder_for, label_contexts, load_labels
from metaclaw.scoring.reward_features import LEXICAL, features
from metaclaw.scoring.reward_model import fit, predict
from metaclaw.scoring.reward_store import current_info
from metaclaw.scoring.scorer import score
from tests.helpers import rows
from tests.stubs.rule_judge import ChatJudge

T = TypeVar("T")
TARGET_SAVED = 0.60
TARGET_POINTS = 3.0
FEEDBACK_SHARE = 0.05


def feedback_rows(wave: list[Turn], rng: random.Random) -> list[dict[str, Any]]:
    return [
        {
            "feedback_id": f"fb-{t.row['turn_id']}",
            "turn_id": t.row["turn_id"],
            "value": 1.0 if t.good else -1.0,
            "ts": t.row["ts_end"] + 1_000_000,
        }
        for t in wave
        if rng.random() < FEEDBACK_SHARE
    ]


def run_arm(
    home: Path, turns: list[Turn], waves: int, triage: bool, judge_error: float
) -> dict[str, Any]:
    """Score the turns wave by wave; agreement and judge calls per wave and in total."""
    rng = random.Random(7)  # the same feedback in both arms
    size = -(-len(turns) // waves)
    per_wave: list[dict[str, Any]] = []
    with ChatJudge(NoisyJudge(judge_error)) as judge:
        settings = Settings(
            home=home,
            judge=JudgeSettings(
                base_url=judge.base_url,
                model="stand-in",
                session_idle_s=0,
                max_calls_per_run=10**7,
                timeout_s=60,
                structured_output=False,
            ),
            reward_model=RewardModelSettings(enabled=triage),
        )
        for w in range(waves):
            wave = turns[w * size : (w + 1) * size]
            with WalWriter(settings.paths.wal) as wal:
                wal.append("turns", [t.row for t in wave])
                fb = feedback_rows(wave, rng)
                if fb:
                    wal.append("feedback", fb)
            start = time.perf_counter()
            report = score(settings)
            t = report.totals
            per_wave.append(
                {
                    "wave": w + 1,
                    "turns": len(wave),
                    "judge_calls": t.calls,
                    "model_scored": t.model_scored,
                    "uncertain": t.model_uncertain,
                    "audited": t.model_audited,
                    "confirmed": t.model_confirmed,
                    "retrained": bool(report.reward_model and report.reward_model["retrained"]),
                    "seconds": round(time.perf_counter() - start, 2),
                }
            )
    truth = {t.row["turn_id"]: t.good for t in turns}
    got = rows(
        settings.paths,
        "SELECT turn_id, reward, reward_source FROM turn_rewards "
        "WHERE reward_source IN ('judge', 'reward_model')",
    )
    by_source: dict[str, list[bool]] = {}
    for r in got:
        if r["turn_id"] in truth:
            by_source.setdefault(r["reward_source"], []).append(
                (r["reward"] > 0) == truth[r["turn_id"]]
            )
    agree = [a for v in by_source.values() for a in v]
    steady = per_wave[1:] if len(per_wave) > 1 else per_wave
    return {
        "waves": per_wave,
        "turns_scored": len(agree),
        "agreement": float(np.mean(agree)),
        "agreement_by_source": {k: (float(np.mean(v)), len(v)) for k, v in by_source.items()},
        "judge_calls": sum(w["judge_calls"] for w in per_wave),
        "calls_per_1000": 1000 * sum(w["judge_calls"] for w in per_wave) / len(turns),
        "calls_per_1000_after_first_wave": 1000
        * sum(w["judge_calls"] for w in steady)
        / max(1, sum(w["turns"] for w in steady)),
        "model": current_info(settings.paths.reward_models),
        "settings": settings,
    }


def speed(settings: Settings) -> dict[str, float]:
    """Training time per 10k labels (features + fit) and scoring turns/s (features + predict),
    on the triage arm's own ledger."""
    con = connect(settings.paths)
    try:
        labels = load_labels(con, 100_000)
        contexts = label_contexts(con, labels)
    finally:
        con.close()
    embedder = embedder_for(settings)
    (x, feature_s, feature_cpu) = _timed(lambda: features(contexts, embedder))
    by_turn = {lb.turn_id: lb.value > 0 for lb in labels}
    y = np.array([by_turn[c.turn.turn_id] for c in contexts], np.float64)
    pick = np.random.default_rng(0).choice(len(x), 10_000, replace=True)
    l2 = settings.reward_model.l2
    model, fit_s, fit_cpu = _timed(lambda: fit(x[pick], y[pick], l2=l2, keep=len(LEXICAL)))
    _, score_s, score_cpu = _timed(lambda: predict(model, features(contexts, embedder)))
    per_10k = 10_000 / len(contexts)
    return {
        "train_s_per_10k_labels": fit_s + feature_s * per_10k,
        "train_cpu_s_per_10k_labels": fit_cpu + feature_cpu * per_10k,
        "fit_s_10k": fit_s,
        "scoring_turns_per_s": len(contexts) / score_s,
        "scoring_turns_per_cpu_s": len(contexts) / score_cpu,
    }


def _timed(work: Callable[[], T]) -> tuple[T, float, float]:
    """The result, wall seconds and CPU seconds (all threads: BLAS included) of `work`. CPU
    time is the figure to compare on a shared machine, where wall time counts waiting."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = work()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--turns", type=int, default=None)
    parser.add_argument("--waves", type=int, default=None)
    parser.add_argument("--judge-error", type=float, default=0.2)
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    n = args.turns or (1600 if args.quick else 4000)
    waves = args.waves or (8 if args.quick else 16)
    turns = sessions("s", n, seed=11, t0_us=now_micros() - 10 * 86_400 * 1_000_000)
    with tempfile.TemporaryDirectory(prefix="metaclaw-bench-rm-") as tmp:
        base = run_arm(Path(tmp) / "judge", turns, waves, False, args.judge_error)
        tri = run_arm(Path(tmp) / "triage", turns, waves, True, args.judge_error)
        timing = speed(tri["settings"])
    print(f"{len(turns)} turns in {waves} waves; stand-in judge vote error {args.judge_error}")
    print_table(
        [
            "wave",
            "turns",
            "judge calls",
            "model scored",
            "uncertain",
            "1 vote agreed",
            "audited",
            "retrained",
            "s",
        ],
        [
            [
                w["wave"],
                w["turns"],
                w["judge_calls"],
                w["model_scored"],
                w["uncertain"],
                w["confirmed"],
                w["audited"],
                w["retrained"],
                w["seconds"],
            ]
            for w in tri["waves"]
        ],
    )
    saved = 1 - tri["judge_calls"] / base["judge_calls"]
    points = 100 * (base["agreement"] - tri["agreement"])
    print_table(
        ["arm", "agreement with humans", "judge calls / 1000 turns", "after wave 1"],
        [
            [
                "judge only",
                f"{base['agreement']:.1%}",
                base["calls_per_1000"],
                base["calls_per_1000_after_first_wave"],
            ],
            [
                "triage",
                f"{tri['agreement']:.1%}",
                tri["calls_per_1000"],
                tri["calls_per_1000_after_first_wave"],
            ],
        ],
        digits=0,
    )
    for source, (rate, count) in sorted(tri["agreement_by_source"].items()):
        print(f"  triage arm, rewards from {source}: {rate:.1%} agree ({count} turns)")
    model = tri["model"]
    if model is not None and model.holdout is not None:
        h = model.holdout
        print(
            f"model {model.version}: {model.train_turns} training labels, held-out AUC "
            f"{h.auc:.3f}, accuracy {h.accuracy:.3f} ({h.turns} turns), ECE {h.ece:.3f}, "
            f"confident share {h.coverage:.2f} at {h.confident_accuracy:.3f} accuracy"
        )
    print(
        f"training per 10k labels (features + fit): {timing['train_cpu_s_per_10k_labels']:.1f} "
        f"CPU s ({timing['train_s_per_10k_labels']:.1f} s wall; fit alone "
        f"{timing['fit_s_10k']:.1f} s); scoring (features + predict): "
        f"{timing['scoring_turns_per_cpu_s']:,.0f} turns per CPU s "
        f"({timing['scoring_turns_per_s']:,.0f} turns/s wall)"
    )
    ok = saved >= TARGET_SAVED and points <= TARGET_POINTS
    print(
        f"judge calls saved: {saved:.1%} (target >= {TARGET_SAVED:.0%}); agreement cost: "
        f"{points:+.1f} points (target <= {TARGET_POINTS:.0f}) -> {'PASS' if ok else 'FAIL'}"
    )
    if args.json:
        write_json(
            args.json,
            {
                "machine": machine_summary(),
                "turns": len(turns),
                "waves": waves,
                "saved": saved,
                "agreement_points_lost": points,
                "judge_only": {k: v for k, v in base.items() if k not in ("settings", "model")},
                "triage": {k: v for k, v in tri.items() if k not in ("settings", "model")},
                "timing": timing,
            },
        )


if __name__ == "__main__":
    main()
