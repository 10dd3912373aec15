"""The reward model's pure parts: the fit and its uncertainty, the held-out figures, triage."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from metaclaw.scoring.reward_metrics import (
    auc,
    calibration,
    expected_calibration_error,
    holdout_report,
)
from metaclaw.scoring.reward_model import Predictions, dumps, fit, loads, predict
from metaclaw.scoring.triage import Decision, audited, triage
from metaclaw.scoring.votes import Vote, majority


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two lexical columns and 40 'embedding' columns; the label is a noisy rule on a
    direction of the embedding block."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 42))
    logit = 3.0 * x[:, 5] - 2.0 * x[:, 0]
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    return x, y


def test_fit_learns_the_rule_and_generalises() -> None:
    x, y = _data(2000, 0)
    model = fit(x, y, l2=1.0, keep=2, components=40)
    xt, yt = _data(1000, 1)
    p = predict(model, xt).p
    noiseless = (3.0 * xt[:, 5] - 2.0 * xt[:, 0]) > 0
    assert np.mean((p >= 0.5) == noiseless) >= 0.93
    assert auc(yt, p) is not None and auc(yt, p) >= 0.85  # type: ignore[operator]
    shuffled = fit(x, np.random.default_rng(2).permutation(y), l2=1.0, keep=2, components=40)
    assert np.mean((predict(shuffled, xt).p >= 0.5) == noiseless) < 0.65  # the rule, not luck


def test_uncertainty_grows_away_from_the_training_data() -> None:
    x, y = _data(300, 3)
    model = fit(x, y, l2=1.0, keep=2, components=40)
    near = predict(model, x[:50])
    far = predict(model, x[:50] * 8.0)  # same directions, far outside what was seen
    assert np.median(far.logit_std) > 4 * np.median(near.logit_std)
    # the posterior average is never more extreme than the point estimate's sigmoid
    mu = (x[:50] * 8.0 - model.mean) / model.scale
    design = np.hstack([mu[:, :2], mu[:, 2:] @ model.basis, np.ones((50, 1))])
    raw = 1 / (1 + np.exp(-(design @ model.weights)))
    assert np.all(np.abs(far.p - 0.5) <= np.abs(raw - 0.5) + 1e-9)


def test_weights_count_like_repeated_rows() -> None:
    x, y = _data(400, 4)
    doubled = fit(np.vstack([x, x[:100]]), np.concatenate([y, y[:100]]), l2=1.0, keep=2)
    weighted = fit(x, y, np.concatenate([np.full(100, 2.0), np.ones(300)]), l2=1.0, keep=2)
    xt, _ = _data(200, 5)
    assert np.allclose(predict(doubled, xt).p, predict(weighted, xt).p, atol=0.02)


def test_round_trip_and_refusals() -> None:
    x, y = _data(200, 6)
    model = fit(x, y, keep=2, components=16)
    again = loads(dumps(model))
    assert again.digest == model.digest and again.keep == 2
    assert np.array_equal(predict(again, x).p, predict(model, x).p)
    with pytest.raises(ValueError, match="both classes"):
        fit(x, np.ones(len(x)))


def test_auc_is_the_share_of_ordered_pairs() -> None:
    rng = np.random.default_rng(7)
    y = rng.random(60) < 0.4
    score = np.round(rng.random(60), 1)  # many ties
    pairs = [
        1.0 if a > b else 0.5 if a == b else 0.0
        for (a, ya), (b, yb) in itertools.product(zip(score, y, strict=True), repeat=2)
        if ya and not yb
    ]
    assert auc(y, score) == pytest.approx(np.mean(pairs))
    assert auc(np.ones(5, bool), np.arange(5.0)) is None


def test_calibration_bins_and_error() -> None:
    p = np.array([0.05, 0.15, 0.95, 0.95, 0.85])
    y = np.array([0, 0, 1, 0, 1])
    bins = calibration(y, p)
    assert [(b.low, b.turns, b.observed) for b in bins] == [
        (0.0, 1, 0.0),
        (0.1, 1, 0.0),
        (0.8, 1, 1.0),
        (0.9, 2, 0.5),
    ]
    # |0.05-0| + |0.15-0| + |0.85-1| + 2·|0.95-0.5| over 5 turns
    assert expected_calibration_error(bins) == pytest.approx((0.05 + 0.15 + 0.15 + 0.9) / 5)
    report = holdout_report(y, p, ["explicit", "judge", "judge", "explicit", "judge"], 0.9)
    assert report.human_turns == 2 and report.human_accuracy == 0.5
    assert report.coverage == pytest.approx(0.6) and report.confident_accuracy == pytest.approx(
        2 / 3
    )


def test_triage_routes_and_a_stable_audit_share() -> None:
    ids = [f"turn-{i}" for i in range(20_000)]
    share = np.mean([audited(t, 0.1) for t in ids])
    assert 0.09 < share < 0.11
    assert [audited(t, 0.1) for t in ids[:200]] == [audited(t, 0.1) for t in ids[:200]]
    p = np.array([0.95, 0.6, 0.1, 0.97])
    sure = [t for t in ids if not audited(t, 0.5)][:4]
    checked = next(t for t in ids if audited(t, 0.5))
    decisions = triage([sure[0], sure[1], sure[2], checked], Predictions(p, np.zeros(4)), 0.9, 0.5)
    assert [d.route for d in decisions] == ["model", "uncertain", "model", "audit"]
    assert [d.to_judge for d in decisions] == [False, True, False, True]


def test_one_vote_settles_a_turn_only_when_it_agrees_with_the_models_lean() -> None:
    leans_good, leans_bad, no_lean = (Decision("t", "uncertain", p, 1.0) for p in (0.6, 0.35, 0.5))
    up, down, neutral = (majority([Vote(v)]) for v in (1, -1, 0))
    assert [leans_good.confirmed_by(v) for v in (up, down, neutral)] == [True, False, False]
    assert [leans_bad.confirmed_by(v) for v in (up, down, neutral)] == [False, True, False]
    assert not any(no_lean.confirmed_by(v) for v in (up, down, neutral))
    assert not leans_good.confirmed_by(majority([Vote(None, error="garbage")]))
