"""The gate's statistics (pure functions, tested on known inputs).

Why both orders: LLM judges favour a position (often the first answer). Each pair is judged
twice, candidate as A and as B; a pair scores 1 when the candidate wins both, 0 when it loses
both, and 0.5 otherwise (a tie, or a split that is the position bias talking). The two orders of
one pair are not independent, so the pair (and for the test, the prompt) is the unit.

The decision is `sign_test`: an exact one-sided binomial test on the *decided* prompts (won or
lost), with ties reported and left out — never counted as half-wins, which let a candidate that
mostly ties through on accumulated noise — at a level `spend_alpha` lowers with every decision
against the same current policy, so repeating the gate does not inflate false promotions.

The win rate with a Wilson interval (ties as half-points) is kept as a description for reports:
Wilson's score interval stays honest at 0 % / 100 % and on small samples where Wald collapses.
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
        n=n,
        wins=sum(1 for s in valid if s == 1.0),
        losses=sum(1 for s in valid if s == 0.0),
        ties=sum(1 for s in valid if s == 0.5),
        missing=len(values) - n,
        win_rate=total / n if n else math.nan,
        low=low,
        high=high,
        confidence=confidence,
    )


# ----- the sequential gate: an exact sign test with α spent across repeated decisions ---------


def spend_alpha(alpha: float, k: int) -> float:
    """α for the k-th decision against the same current policy: α·6/(π²k²), summing to α.

    Why: every candidate faces the same promoted policy on much the same prompts; testing each
    at a fixed α lets false promotions accumulate (after 20 decisions at 0.025 the chance of at
    least one is ~40 %). Spending a convergent series keeps the chance of *any* false promotion
    against that policy at most α, however many candidates come (a union bound: it needs no
    independence between decisions).
    """
    if k < 1:
        raise ValueError(f"decisions are counted from 1, got k={k}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha * 6 / (math.pi**2 * k * k)


def binomial_tail(successes: int, n: int, p0: float) -> float:
    """P(X ≥ successes) for X ~ Binomial(n, p0): the exact one-sided p-value."""
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes}, {n}")
    if successes == 0:
        return 1.0
    return min(
        1.0, sum(math.comb(n, i) * p0**i * (1 - p0) ** (n - i) for i in range(successes, n + 1))
    )


def prompt_outcome(scores: Iterable[float | None]) -> Outcome | None:
    """One prompt's outcome from its pairs' scores: the sign of (won − lost) pairs.

    The prompt, not the pair, is the unit of the test: samples of one prompt are not
    independent. None when no pair of the prompt has a verdict."""
    valid = [s for s in scores if s is not None]
    if not valid:
        return None
    net = sum(1 for s in valid if s == 1.0) - sum(1 for s in valid if s == 0.0)
    return "win" if net > 0 else "loss" if net < 0 else "tie"


@dataclass(frozen=True)
class SignTest:
    """The gate's test: H0 "P(candidate wins | the prompt is decided) ≤ p0" against the current
    policy, one-sided exact binomial on decided prompts; ties are counted and reported, never
    half-wins. Promote only when p_value ≤ alpha_k."""

    wins: int
    losses: int
    ties: int  # identical replies, tie verdicts, split verdicts (position bias)
    p0: float
    p_value: float
    alpha: float  # the family-wise budget per current policy
    k: int  # this is the k-th decision against the current policy
    alpha_k: float

    @property
    def decided(self) -> int:
        return self.wins + self.losses

    @property
    def significant(self) -> bool:
        return self.decided > 0 and self.p_value <= self.alpha_k


def sign_test(outcomes: Iterable[Outcome | None], *, p0: float, alpha: float, k: int) -> SignTest:
    """The k-th decision's test over per-prompt outcomes (None: no verdict, left out)."""
    values = [o for o in outcomes if o is not None]
    wins = sum(1 for o in values if o == "win")
    losses = sum(1 for o in values if o == "loss")
    return SignTest(
        wins=wins,
        losses=losses,
        ties=len(values) - wins - losses,
        p0=p0,
        p_value=binomial_tail(wins, wins + losses, p0),
        alpha=alpha,
        k=k,
        alpha_k=spend_alpha(alpha, k),
    )
