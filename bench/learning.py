"""Does the loop make the agent better? Preferences taught through the proxy, held-out compliance
before → after, against a control with learning switched off.

For each preference kind (`metaclaw.learning.preferences`) and each arm:
1. a fresh MetaClaw home: the local policy server (the embedded model unless `--base-model`)
   and the capture proxy as real processes, as `metaclaw up` runs them;
2. **before**: the held-out questions (never asked while teaching), each in a fresh session at
   temperature 0, asked plainly (the preference is not restated), counted by its rule;
3. **teaching rounds** until `--minutes` run out: the scripted user asks the teaching questions
   plainly at the training temperature (on-policy data), rates every reply ±1 through
   `POST /v1/feedback` and corrects the ones that ignore the preference, as a person would;
   the *learn* arm then runs a train step and the deploy gate in this process (the same library
   calls the `train` and `deploy` flows make); the *control* arm asks, rates and corrects
   exactly the same way and trains nothing;
4. **after**: the held-out questions again, served by whatever the gate promoted.

What is measured: whether the agent adopted the user's preference without being told again.
Told in the same message, the embedded model already keeps answers short (12/12 held-out
replies under 15 words at temperature 0, measured), so restating it would measure instruction
following, not learning; the "before" column is the base rate when asked plainly.

The gate judges its own prompts (the teaching questions, never the held-out ones) with a rule
judge (`tests/stubs/rule_judge.py`): a stand-in for a capable judge that reads the user's
preference.
Every figure is measured in the run; the JSON report keeps every reply.

    .venv/bin/python bench/learning.py --kinds sign_off opener terse --minutes 10 --max-rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench`, `tests` and `metaclaw` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from bench._common import REPO, machine_summary, print_table, write_json
from metaclaw.demo import Round, ScriptedUser
from metaclaw.learning.preferences import (
    HELD_OUT_QUESTIONS,
    PREFERENCES,
    TEACHING_QUESTIONS,
    Preference,
)
from tests.stubs.rule_judge import RuleJudge

ARMS = ("learn", "control")


@dataclass
class ArmResult:
    kind: str
    arm: str
    before: float
    after: float
    rounds: int = 0
    teaching_turns: int = 0
    teaching_compliance: list[float] = field(default_factory=list)  # per round, at T = 1
    train_steps: int = 0
    gate: list[str] = field(default_factory=list)  # one decision per gate run
    first_feedback_to_promotion_s: float | None = None
    seconds: float = 0.0
    replies_before: list[str] = field(default_factory=list)
    replies_after: list[str] = field(default_factory=list)


def arm_env(
    home: Path,
    args: argparse.Namespace,
    judge_url: str,
    prompts: Path,
    proxy_port: int,
    policy_port: int,
) -> dict[str, str]:
    env = {
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(home / "metaclaw.toml"),
        "METACLAW_PROXY__PORT": str(proxy_port),
        "METACLAW_POLICY__PORT": str(policy_port),
        # explicit ratings are the reward; no LLM judge or critic spends the CPU
        "METACLAW_JUDGE__LOCAL_DEFAULT": "false",
        "METACLAW_CRITIC__LOCAL_DEFAULT": "false",
        "METACLAW_SKILLS__ENABLED": "false",
        "METACLAW_TRAINING__BATCH_SIZE": str(args.batch_size),
        "METACLAW_TRAINING__LEARNING_RATE": str(args.learning_rate),
        # a round's turns are trained in that round (not one batch per round)
        "METACLAW_TRAINING__MAX_STEPS_PER_RUN": str(args.steps_per_round),
        # between promotions the learner runs ahead of the served policy by whole rounds of
        # large steps; the guards' defaults are sized for the default learning rate (1e-4)
        "METACLAW_TRAINING__MAX_KL": str(args.max_kl),
        "METACLAW_TRAINING__MAX_UPDATE_KL": str(args.max_update_kl),
        "METACLAW_TRAINING__MAX_UNPROMOTED_STEPS": str(args.max_unpromoted_steps),
        "METACLAW_TRAINING__MAX_STALENESS": str(args.max_unpromoted_steps - 1),
        "METACLAW_TRAINING__HINT_ROLLOUTS": str(args.hint_rollouts),
        "METACLAW_DEPLOY__JUDGE_BASE_URL": judge_url,
        "METACLAW_DEPLOY__JUDGE_MODEL": "rule",
        # the rule judge alone decides, as in every run reported so far (the product's gate
        # would otherwise check the users' stated rule first: the same verdicts, fewer calls)
        "METACLAW_DEPLOY__STATED_RULES": "false",
        "METACLAW_DEPLOY__PROMPTS_FILE": str(prompts),
        "METACLAW_DEPLOY__EVAL_FRACTION": "0",  # the gate's prompts are the file's, below
        "METACLAW_DEPLOY__MIN_EVAL_PROMPTS": str(min(8, len(TEACHING_QUESTIONS))),
        "METACLAW_DEPLOY__MAX_NEW_TOKENS": str(args.max_tokens),
        # the gate compares the two policies' greedy replies, as the held-out measure does: at
        # T = 1 the 135M model's replies are mostly noise ("Mutt's have heard Oberkbomoen's…"),
        # which a rule judge mostly ties whatever the policies' modal behaviour
        "METACLAW_DEPLOY__TEMPERATURE": "0",
    }
    if args.base_model:
        env["METACLAW_TRAINING__BASE_MODEL"] = args.base_model
    return env


def gate_prompts() -> str:
    """The gate's yardstick: the teaching questions asked plainly, as the held-out ones are."""
    return "".join(
        json.dumps({"messages": [{"role": "user", "content": q}]}) + "\n"
        for q in TEACHING_QUESTIONS
    )


def measure(user: ScriptedUser, label: str) -> Round:
    return user.ask(label, HELD_OUT_QUESTIONS, teach=False)


def run_arm(
    pref: Preference, arm: str, args: argparse.Namespace, root: Path, max_rounds: int
) -> ArmResult:
    from metaclaw.cli_support import load_settings
    from metaclaw.serving.launch import start_policy_server
    from metaclaw.supervisor import start_proxy
    from tests.helpers import free_port

    home = root / f"{pref.kind}-{arm}"
    home.mkdir(parents=True)
    prompts = home / "gate-prompts.jsonl"
    prompts.write_text(gate_prompts())
    started = time.monotonic()
    children = []
    with RuleJudge(pref.complies) as judge:
        os.environ.update(arm_env(home, args, judge.base_url, prompts, free_port(), free_port()))
        settings = load_settings()
        paths = settings.paths
        try:
            children.append(start_policy_server(paths, settings.policy.port))
            children.append(start_proxy(paths, settings.proxy.port))
            url = f"http://127.0.0.1:{settings.proxy.port}"
            teacher = ScriptedUser(
                url,
                args.max_tokens,
                settings.training.temperature,
                pref,
                restate=False,
                parallel=args.parallel,
            )
            # one at a time: a reply decoded alone is the same reply every time, whereas a
            # batch's shape changes the float sums and can flip a near-tie in greedy decoding
            greedy = ScriptedUser(url, args.max_tokens, 0.0, pref, restate=False, parallel=1)
            before = measure(greedy, "before")
            result = ArmResult(
                pref.kind, arm, before.rate, before.rate, replies_before=before.replies
            )
            teach(result, args, settings, teacher, max_rounds)
            after = measure(greedy, "after")
            result.after, result.replies_after = after.rate, after.replies
        finally:
            for child in reversed(children):
                child.stop()
    result.seconds = time.monotonic() - started
    return result


def teach(
    result: ArmResult,
    args: argparse.Namespace,
    settings: Any,
    teacher: ScriptedUser,
    max_rounds: int,
) -> None:
    """Teaching rounds until the time budget (from the first question) or `max_rounds` is
    spent; the learn arm trains and gates after each round."""
    from metaclaw.deploy.deployer import run_gate
    from metaclaw.training.trainer import Trainer

    trainer = Trainer(settings) if result.arm == "learn" else None
    first_feedback: float | None = None
    deadline = time.monotonic() + args.minutes * 60
    try:
        while time.monotonic() < deadline and result.rounds < max_rounds:
            taught = teacher.ask(f"teach{result.rounds}", TEACHING_QUESTIONS, teach=True)
            first_feedback = first_feedback or time.monotonic()
            result.rounds += 1
            result.teaching_turns += len(taught.replies)
            result.teaching_compliance.append(taught.rate)
            if trainer is None:
                continue
            steps = [o for o in trainer.run() if o.status == "trained"]
            result.train_steps += len(steps)
            if not steps:
                continue
            gate = run_gate(settings)
            result.gate.append(gate.status)
            print(
                f"  [{result.kind}/{result.arm}] round {result.rounds}: teaching compliance "
                f"{taught.rate:.0%}, {len(steps)} step(s), gate {gate.status}: "
                f"{gate.reason[:120]}",
                flush=True,
            )
            if gate.status == "promoted" and result.first_feedback_to_promotion_s is None:
                result.first_feedback_to_promotion_s = time.monotonic() - first_feedback
    finally:
        if trainer is not None:
            trainer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=["sign_off", "opener", "terse"],
        choices=sorted(PREFERENCES),
        help="Default: the kinds whose base rate leaves +50 points to gain (docs/learning.md).",
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="Teaching budget per arm.")
    parser.add_argument("--max-rounds", type=int, default=50)
    parser.add_argument("--max-tokens", type=int, default=64, help="Room for a sign-off.")
    parser.add_argument("--parallel", type=int, default=6, help="Users asking at once.")
    parser.add_argument("--batch-size", type=int, default=8)
    # measured: 5e-4 left the held-out replies unchanged after a round; 5e-3 moves them
    parser.add_argument("--learning-rate", type=float, default=5e-3)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument(
        "--hint-rollouts", type=int, default=6, help="training.hint_rollouts per corrected turn"
    )
    parser.add_argument("--max-kl", type=float, default=1.0, help="training.max_kl")
    parser.add_argument(
        "--max-update-kl",
        type=float,
        default=5.0,
        help="training.max_update_kl (a 5e-3 step moved its own batch by up to 1.6)",
    )
    parser.add_argument(
        "--max-unpromoted-steps", type=int, default=9, help="training.max_unpromoted_steps"
    )
    parser.add_argument(
        "--base-model",
        default=None,
        help="An HF model directory (default: the embedded model, converted once).",
    )
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--json", default=None, help="Write the full report here.")
    parser.add_argument("--keep", action="store_true", help="Keep the homes (ledgers, logs).")
    args = parser.parse_args()
    # a stopped run still stops its policy servers and proxies (the `finally` blocks run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    root = Path(tempfile.mkdtemp(prefix="metaclaw-learning-"))
    results: list[ArmResult] = []
    try:
        if not args.base_model:  # convert the embedded model once, not once per arm
            from metaclaw.config import Settings
            from metaclaw.models.resolve import resolve_model_dir

            args.base_model = str(
                resolve_model_dir(Settings().training.base_model, root, notify=print)
            )
        for kind in args.kinds:
            rounds = args.max_rounds
            for arm in args.arms:  # learn first: the control then gets as many rounds (the same
                # ratings and corrections), not the same minutes (it spends none training)
                print(f"{kind} / {arm} …", flush=True)
                result = run_arm(PREFERENCES[kind], arm, args, root, rounds)
                results.append(result)
                if arm == "learn":
                    rounds = result.rounds
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    rows = []
    for r in results:
        delta = (r.after - r.before) * 100
        rows.append(
            [
                r.kind,
                r.arm,
                f"{r.before:.0%}",
                f"{r.after:.0%}",
                f"{delta:+.0f}",
                r.rounds,
                r.train_steps,
                ",".join(r.gate) or "-",
                "-"
                if r.first_feedback_to_promotion_s is None
                else f"{r.first_feedback_to_promotion_s:.0f}",
                f"{r.seconds:.0f}",
            ]
        )
    print_table(
        [
            "preference",
            "arm",
            "before",
            "after",
            "points",
            "rounds",
            "steps",
            "gate",
            "feedback→promotion s",
            "wall s",
        ],
        rows,
    )
    if args.json:
        write_json(
            args.json,
            {
                "machine": machine_summary(),
                "args": vars(args),
                "results": [asdict(r) for r in results],
                "repo": str(REPO),
            },
        )


if __name__ == "__main__":
    main()
