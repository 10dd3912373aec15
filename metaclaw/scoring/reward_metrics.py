"""Held-out figures of a reward model: AUC, accuracy, calibration (pure).

Why these: triage trusts the model's confidence, so calibration (does 0.9 mean right 9 times in
10?) matters as much as ranking (AUC) and plain accuracy; coverage says what share of turns the
model would take from the judge at the configured confidence, and how often it is right there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

CALIBRATION_BINS = 10


def auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann–Whitney, ties count half); None with one class only."""
    y = np.asarray(y, bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score))
    sorted_scores = np.asarray(score)[order]
    i = 0
    while i < len(order):  # average ranks over ties
        j = i
        while j + 1 < len(order) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


@dataclass(frozen=True)
class CalibrationBin:
    low: float
    high: float
    turns: int
    mean_p: float
    observed: float


def calibration(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> list[CalibrationBin]:
    """Equal-width bins of predicted P(good): mean prediction vs observed share good."""
    y = np.asarray(y, np.float64)
    p = np.asarray(p, np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out = []
    for b in range(bins):
        mask = which == b
        if mask.any():
            out.append(
                CalibrationBin(
                    float(edges[b]),
                    float(edges[b + 1]),
                    int(mask.sum()),
                    round(float(p[mask].mean()), 4),
                    round(float(y[mask].mean()), 4),
                )
            )
    return out


def expected_calibration_error(bins: list[CalibrationBin]) -> float | None:
    total = sum(b.turns for b in bins)
    if not total:
        return None
    return sum(b.turns * abs(b.mean_p - b.observed) for b in bins) / total


def _accuracy(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(np.mean((p >= 0.5) == (y >= 0.5))) if len(y) else None


@dataclass
class HoldoutReport:
    """What `metaclaw status` and the score flow's artifact show about the current model."""

    turns: int
    auc: float | None
    accuracy: float | None
    human_turns: int
    human_accuracy: float | None
    judge_turns: int
    judge_accuracy: float | None
    ece: float | None
    coverage: float | None  # share of held-out turns at or above the triage confidence
    confident_accuracy: float | None
    bins: list[CalibrationBin] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HoldoutReport:
        bins = [CalibrationBin(**b) for b in data.get("bins", [])]
        return cls(**{**data, "bins": bins})


def holdout_report(
    y: np.ndarray, p: np.ndarray, sources: list[str], confidence: float
) -> HoldoutReport:
    """Figures over held-out labels; `sources` names each label's source (explicit = human)."""
    y = np.asarray(y, np.float64)
    p = np.asarray(p, np.float64)
    src = np.asarray(sources)
    human, judge = src == "explicit", src == "judge"
    sure = np.maximum(p, 1.0 - p) >= confidence
    bins = calibration(y, p)
    return HoldoutReport(
        turns=len(y),
        auc=auc(y, p),
        accuracy=_accuracy(y, p),
        human_turns=int(human.sum()),
        human_accuracy=_accuracy(y[human], p[human]),
        judge_turns=int(judge.sum()),
        judge_accuracy=_accuracy(y[judge], p[judge]),
        ece=expected_calibration_error(bins),
        coverage=float(sure.mean()) if len(y) else None,
        confident_accuracy=_accuracy(y[sure], p[sure]),
        bins=bins,
    )
