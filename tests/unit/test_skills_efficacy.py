"""Efficacy with vs without a skill in similar contexts, and when a skill is retired."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from metaclaw.skills.efficacy import RewardedTurn, compute, retirements
from tests.skills_helpers import make_skill


def topic_embed(texts: list[str]) -> np.ndarray:
    """Two orthogonal topics: texts about python vs everything else (an input, not a mock)."""
    out = np.zeros((len(texts), 2), np.float32)
    for i, t in enumerate(texts):
        out[i] = [1.0, 0.0] if "python" in t else [0.0, 1.0]
    return out


def turns(
    n_with: int,
    r_with: float,
    n_without: int,
    r_without: float,
    n_other: int = 0,
    r_other: float = 1.0,
    ref: str = "x@1",
) -> list[RewardedTurn]:
    rows = [RewardedTurn(f"w{i}", "python error", (ref,), r_with) for i in range(n_with)]
    rows += [RewardedTurn(f"o{i}", "python crash", (), r_without) for i in range(n_without)]
    rows += [RewardedTurn(f"z{i}", "bake a cake", (), r_other) for i in range(n_other)]
    return rows


def test_with_vs_without_uses_similar_turns_only() -> None:
    s = make_skill("debug_python_exceptions")
    data = turns(10, -0.5, 10, 0.5, n_other=30, r_other=1.0, ref=s.ref)
    (eff,) = compute(
        [s], {s.ref: np.array([1.0, 0.0], np.float32)}, data, topic_embed, min_similarity=0.5
    )
    assert eff.uses == 10 and eff.n_without == 10 and eff.baseline == "similar"
    assert eff.mean_with == pytest.approx(-0.5) and eff.mean_without == pytest.approx(0.5)
    assert eff.effect == pytest.approx(-1.0)
    assert eff.successes == pytest.approx(2.5) and eff.failures == pytest.approx(7.5)


def test_few_similar_turns_fall_back_to_all_turns() -> None:
    s = make_skill("debug_python_exceptions")
    data = turns(4, 1.0, 2, -1.0, n_other=10, r_other=0.0, ref=s.ref)
    (eff,) = compute(
        [s], {s.ref: np.array([1.0, 0.0], np.float32)}, data, topic_embed, min_similarity=0.5
    )
    assert eff.baseline == "all" and eff.n_without == 12
    assert eff.mean_without == pytest.approx(-2 / 12)


def test_confidently_negative_skills_retire_and_pinned_ones_stay() -> None:
    bad = make_skill("debug_python_exceptions")
    data = turns(30, -0.8, 30, 0.6, ref=bad.ref)
    stats = compute(
        [bad], {bad.ref: np.array([1.0, 0.0], np.float32)}, data, topic_embed, min_similarity=0.5
    )
    (retire,) = retirements([bad], stats, min_uses=20, z=1.96)
    assert retire.skill is bad and "auto-retired" in retire.reason
    assert retirements([replace(bad, pinned=True)], stats, min_uses=20, z=1.96) == []
    assert retirements([bad], stats, min_uses=31, z=1.96) == []  # not enough evidence yet


def test_noisy_or_positive_skills_are_kept() -> None:
    s = make_skill("debug_python_exceptions")
    rng = np.random.default_rng(0)
    noisy = [
        RewardedTurn(f"w{i}", "python", (s.ref,), float(rng.choice([-1, 1]))) for i in range(25)
    ]
    noisy += [RewardedTurn(f"o{i}", "python", (), float(rng.choice([-1, 1]))) for i in range(25)]
    vec = {s.ref: np.array([1.0, 0.0], np.float32)}
    assert (
        retirements(
            [s], compute([s], vec, noisy, topic_embed, min_similarity=0.5), min_uses=20, z=1.96
        )
        == []
    )
    good = compute([s], vec, turns(30, 0.9, 30, -0.2, ref=s.ref), topic_embed, min_similarity=0.5)
    assert good[0].effect == pytest.approx(1.1)
    assert retirements([s], good, min_uses=20, z=1.96) == []
