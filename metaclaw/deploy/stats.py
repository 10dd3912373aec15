"""Win-rate maths of the gate: pairwise verdicts in both orders → a win rate with a Wilson
interval (pure functions, tested on known inputs).

Why both orders: LLM judges favour a position (often the first answer). Each pair is judged
twice, candidate as A and as B; a pair scores 1 when the candidate wins both, 0 when it loses
both, and 0.5 otherwise (a tie, or a split that is the position bias talking). The unit of the
interval is the pair, not the single judgment: the two orders of one pair are not independent.

Why Wilson: the normal ("Wald") interval collapses to zero width at 0 % or 100 % and is far too
narrow for the small samples an eval set gives; Wilson's score interval stays honest there.
Half-points from ties enter as fractional successes (a standard approximation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

Verdict = Literal["A", "B", "tie"]
Outcome = Literal["win", "loss", "tie"]


def z_for(confidence: float) -> float:
    """Two-sided normal quantile, e.g. 0.95 → 1.959964."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; (0, 1) when there is no data."""
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    z = z_for(confidence)
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    denom = 1 + z2 / n
    return max(0.0, (centre - spread) / denom), min(1.0, (centre + spread) / denom)


def candidate_outcome(verdict: Verdict, candidate_is: Literal["A", "B"]) -> Outcome:
    """One judgment, from the candidate's side."""
    if verdict == "tie":
        return "tie"
    return "win" if verdict == candidate_is else "loss"


_POINTS = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def pair_score(candidate_first: Verdict | None, candidate_second: Verdict | None) -> float | None:
    """The candidate's score for one pair judged in both orders; None if a verdict is missing.

    `candidate_first`: the verdict with the candidate shown as A; `candidate_second`: as B.
    """
    if candidate_first is None or candidate_second is None:
        return None
    first = _POINTS[candidate_outcome(candidate_first, "A")]
    second = _POINTS[candidate_outcome(candidate_second, "B")]
    if first == second:
        return first
    return 0.5  # split verdicts (position bias) or a tie and a win/loss: half a point


@dataclass(frozen=True)
class WinRate:
    n: int  # pairs with both verdicts
    wins: int  # pairs the candidate won in both orders
    losses: int
    ties: int  # everything else (ties, splits)
    missing: int  # pairs lacking a valid verdict
    win_rate: float  # NaN when n == 0
    low: float
    high: float
    confidence: float


def win_rate(scores: Iterable[float | None], confidence: float = 0.95) -> WinRate:
    """Aggregate pair scores (1, 0.5, 0 or None) into a win rate with its Wilson interval."""
    values = list(scores)
    valid = [s for s in values if s is not None]
    for s in valid:
        if s not in (0.0, 0.5, 1.0):
            raise ValueError(f"a pair score must be 0, 0.5 or 1, got {s}")
    n = len(valid)
    total = sum(valid)
    low, high = wilson_interval(total, n, confidence)
    return WinRate(
        n=n, wins=sum(1 for s in valid if s == 1.0), losses=sum(1 for s in valid if s == 0.0),
        ties=sum(1 for s in valid if s == 0.5), missing=len(values) - n,
        win_rate=total / n if n else math.nan, low=low, high=high, confidence=confidence,
    )
