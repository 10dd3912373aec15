"""The deploy gate as a repeated test: A/A false promotion rate, and A/B power, on real parts.

    .venv/bin/python bench/gate_aa.py                    # 60 A/A decisions, 24 prompts, ~10 min
    .venv/bin/python bench/gate_aa.py --decisions 20 --prompts 16 --json out.json

Parts: the tiny test model with LoRA checkpoints trained by `LocalBackend` (tests/deploy_helpers),
a ledger with `--prompts` held-out scored turns, and the stand-in pairwise judge as a real HTTP
process (`tests/stubs/deploy_server.py`, mode `noisy:Paris:NOISE`): it prefers the reply saying
"Paris" more often, except that with probability NOISE — and always when both say it equally
often — its verdict is a coin flip drawn from a hash of the two replies (deterministic, and
independent between the two orders of a pair). Every decision is `deployer.run_gate`, exactly
what the deploy flow runs.

1. A checkpoint with the base weights ("zero": a LoRA whose update is 0) is promoted by hand.
2. **A/A** — `--decisions` candidates, each the promoted weights plus a no-op or a noise-level
   update (N(0, σ²) on every adapter weight, σ cycling through 0, 0.003, 0.01, 0.03): none is
   better, so every promotion is false; most answer differently from the promoted policy, and
   the judge flips its coin on those. Reported: the false promotion rate, and on the very same
   pairs what fixed-level rules would have done — the old gate (Wilson lower bound of the win
   rate > 0.5, ties as half-points) and a sign test at a fixed one-sided 0.025.
3. **A/B after the spending** — "good" (trained to answer "Paris") against the promoted
   policy as decision k = decisions + 1: must still be promoted (α_k is small by then; enough
   decided prompts still clear it).

Exit status 1 when the A/B candidate is not promoted or the A/A false promotion rate exceeds 5 %.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench`, `tests` and `metaclaw` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench._common import (
    add_wait_idle,
    git_revision,
    load_warning,
    machine_summary,
    print_table,
    settle,
    write_json,
)

FIXED_ALPHA = 0.025  # the old gate's one-sided level (two-sided 95 % Wilson)
TARGET_RATE = 0.05


def describe(outcome: Any) -> dict[str, Any]:
    ev = outcome.evaluation
    if ev is None:
        return {
            "checkpoint_id": outcome.checkpoint_id,
            "status": outcome.status,
            "reason": outcome.reason,
        }
    t = ev.test
    return {
        "checkpoint_id": outcome.checkpoint_id,
        "status": outcome.status,
        "baseline": ev.baseline.label,
        "k": t.k,
        "wins": t.wins,
        "losses": t.losses,
        "ties": t.ties,
        "p_value": t.p_value,
        "alpha_k": t.alpha_k,
        "identical_pairs": sum(p.identical for p in ev.pairs),
        "old_rule_promotes": ev.win.low > 0.5 and not ev.decision.tripped,
        "fixed_alpha_promotes": t.decided > 0
        and t.p_value <= FIXED_ALPHA
        and not ev.decision.tripped,
        "current_cached": ev.current_cached,
        "seconds": ev.seconds.get("total"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=60, help="A/A decisions")
    parser.add_argument("--prompts", type=int, default=24, help="held-out eval prompts")
    parser.add_argument("--noise", type=float, default=0.1, help="judge noise probability")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--json", default=None)
    add_wait_idle(parser)
    args = parser.parse_args()

    import torch

    from metaclaw.deploy import deployer
    from tests.deploy_helpers import (
        MANY_QUESTIONS,
        aa_sequence,
        add_candidates,
        candidate_row,
        deploy_settings,
        eval_turn_ids,
        seed_turns,
        train_toward,
    )
    from tests.helpers import free_port
    from tests.stubs.deploy_server import PairwiseJudgeStub
    from tests.tiny_model import save_tiny_model

    torch.set_num_threads(1)
    settle(args.wait_idle)
    root = Path(tempfile.mkdtemp(prefix="metaclaw-bench-gate-"))
    machine = machine_summary()
    print(
        f"revision {git_revision()} · {machine['cores']} cores ({machine['cpu']}) · "
        f"{args.decisions} A/A decisions · {args.prompts} prompts · judge noise {args.noise}",
        flush=True,
    )
    tiny = save_tiny_model(root / "model")
    good = train_toward(tiny, root / "ckpts", "good", "Paris")
    zero = train_toward(tiny, root / "ckpts", "zero", "-", steps=0)
    with PairwiseJudgeStub(f"noisy:Paris:{args.noise}") as judge:
        settings = deploy_settings(
            root / "home",
            tiny,
            judge.base_url,
            free_port(),
            max_new_tokens=args.max_new_tokens,
            eval_size=args.prompts,
            min_eval_prompts=args.prompts,
        )
        seed_turns(
            settings.paths, eval_turn_ids(settings, args.prompts), MANY_QUESTIONS[: args.prompts]
        )
        add_candidates(settings.paths, candidate_row("zero", zero, 1))
        deployer.promote(settings, "zero", actor="bench", reason="base weights", notify=False)
        started = time.monotonic()
        aa = aa_sequence(settings, zero, root / "aa", args.decisions)
        add_candidates(settings.paths, candidate_row("good", good, 10_000))
        last = deployer.run_gate(settings, "good", notify=False)
        elapsed = time.monotonic() - started

    rows = [describe(o) for o in aa]
    false = sum(r["status"] == "promoted" for r in rows)
    old = sum(bool(r.get("old_rule_promotes")) for r in rows)
    fixed = sum(bool(r.get("fixed_alpha_promotes")) for r in rows)
    n = len(rows)
    print_table(
        ["phase", "candidate", "vs", "k", "won", "lost", "tied", "p", "α_k", "verdict"],
        [
            [
                phase,
                r["checkpoint_id"],
                r.get("baseline", "-"),
                r.get("k", "-"),
                r.get("wins", "-"),
                r.get("losses", "-"),
                r.get("ties", "-"),
                f"{r['p_value']:.2g}" if "p_value" in r else "-",
                f"{r['alpha_k']:.2g}" if "alpha_k" in r else "-",
                r["status"],
            ]
            for phase, r in [*(("A/A", r) for r in rows[:8]), ("A/B", describe(last))]
        ],
    )
    decided = sum(r.get("wins", 0) + r.get("losses", 0) for r in rows)
    ties = sum(r.get("ties", 0) for r in rows)
    cached = sum(r.get("current_cached", 0) for r in rows)
    print(
        f"\nA/A: {n} decisions, {decided} decided prompts and {ties} ties in all; current "
        f"policy's replies from the cache for {cached} of {n * args.prompts} prompts"
    )
    print(
        f"A/A false promotion rate: {false}/{n} = {false / max(n, 1):.1%} "
        f"(target ≤ {TARGET_RATE:.0%}; α = {settings.deploy.alpha} per current policy)"
    )
    print(
        f"  on the same pairs, the old gate (Wilson lower bound > 0.5) would promote "
        f"{old}/{n} = {old / max(n, 1):.1%}; a sign test at fixed one-sided {FIXED_ALPHA}: "
        f"{fixed}/{n} = {fixed / max(n, 1):.1%}"
    )
    print(
        f"A/B good vs the promoted policy after the A/A run (k={describe(last).get('k')}): "
        f"{last.status}"
    )
    print(f"{elapsed:.0f} s in all, {elapsed / (n + 1):.1f} s per decision")
    warning = load_warning()
    if warning:
        print(warning)
    ok = last.status == "promoted" and false / max(n, 1) <= TARGET_RATE
    print(f"verdict: {'PASS' if ok else 'FAIL'}")
    if args.json:
        write_json(
            args.json,
            {
                "revision": git_revision(),
                "args": vars(args),
                "false_promotions": false,
                "decisions": n,
                "old_rule_promotions": old,
                "fixed_alpha_promotions": fixed,
                "ab": describe(last),
                "aa": rows,
                "seconds": elapsed,
            },
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
