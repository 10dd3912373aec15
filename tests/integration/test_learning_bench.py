"""End to end, on the tiny model: a scripted user teaches a preference through the proxy (asks
plainly, rates, corrects); the trainer turns the corrections into rule-holding replies written by
the policy server and trains on them; the gate judges the candidate; held-out questions are
measured before and after; the control arm (the same rounds, no training) trains nothing and
does not move. It runs `bench/learning.py`'s own arms, so the benchmark is tested too.

What it does not assert: that the random tiny model learns the preference well enough for the
gate to promote within a test's budget (two rounds measured 2–1–21 and 4–0–20 wins–losses–ties,
not significant); the learning figure is the benchmark's, on the embedded model
(docs/learning.md)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from metaclaw.config import LedgerPaths
from metaclaw.learning.preferences import Preference, at_most_words
from tests.helpers import rows
from tests.tiny_model import save_tiny_model

# The random tiny model never stops within 16 tokens by itself; the rule "under 3 words" (two
# words ending a sentence) is something its rule-holding replies show it and it can learn.
SHORT = Preference(
    "short",
    "Keep every answer under 3 words.",
    "Too long. Keep it under 3 words, please.",
    at_most_words(2),
    base_rate_nonzero=False,
)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_learn_arm_trains_on_rule_holding_replies_and_the_control_does_not_move(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bench.learning import run_arm

    monkeypatch.setenv("METACLAW_TRAINING__LORA_RANK", "8")
    monkeypatch.setenv("METACLAW_TRAINING__HINT_ROLLOUT_MAX_TOKENS", "128")
    monkeypatch.setenv("METACLAW_DEPLOY__MAX_KL", "10")  # its large steps: 1.2 nats/token measured
    args = argparse.Namespace(
        max_tokens=16,
        parallel=4,
        batch_size=8,
        learning_rate=3e-2,  # a random 99k-parameter model: large steps or nothing moves
        steps_per_round=3,
        # the random model's 3e-2 steps move it ~1 nat/token a step, so the staleness bound is
        # widened (CI measured 1.18 before step 2); test_training_lineage.py tests the bound
        max_kl=10.0,
        max_update_kl=5.0,
        max_unpromoted_steps=9,
        hint_rollouts=2,
        base_model=str(save_tiny_model(tmp_path / "model")),
        minutes=10.0,
    )
    saved = dict(os.environ)  # run_arm sets the arm's environment, as the benchmark does
    try:
        learn = run_arm(SHORT, "learn", args, tmp_path, max_rounds=1)
        control = run_arm(SHORT, "control", args, tmp_path, max_rounds=learn.rounds)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert learn.rounds == control.rounds == 1
    assert learn.replies_before == control.replies_before  # the same base, measured alike
    assert learn.teaching_turns == 24 and learn.train_steps == 3 and len(learn.gate) == 1
    steps = rows(
        LedgerPaths(tmp_path / "short-learn"),
        "SELECT json_extract(metrics, '$.hint_rollouts.samples')::INT AS n FROM train_steps",
    )
    assert len(steps) == 3 and all(r["n"] > 0 for r in steps)  # every step had rule replies
    assert control.train_steps == 0 and control.gate == []
    assert control.replies_after == control.replies_before  # nothing trained, nothing moved
