"""Does a skill help? Per skill version: uses, success counts, and mean reward with vs without it
in similar contexts; and which skills to retire because the answer is confidently "no".

Data: `turns.injected_skills` (skill_id@version) joined with the `turn_rewards` view (reward in
[-1, 1]). "Similar contexts" are rewarded turns the skill was *not* injected into whose query
(the cleaned latest user message) is at least `min_similarity` (cosine) from the skill: the
turns it would have been a candidate for. With fewer than `MIN_WITHOUT` of those, the baseline
falls back to every rewarded turn without the skill in the window.

Decision: effect = mean_with − mean_without, se = √(var_with/n_with + var_without/n_without);
retire when uses ≥ `retire_min_uses` and effect + z·se < 0 (one-sided, `retire_z`). Pinned
skills (restored by hand) are never retired automatically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson

from metaclaw.skills.model import Skill
from metaclaw.skills.query import extract_query

MIN_WITHOUT = 5
VAR_FLOOR = 0.05  # rewards are in [-1, 1]; a floor keeps a tiny sample from looking certain


@dataclass(frozen=True)
class RewardedTurn:
    turn_id: str
    query: str
    injected: tuple[str, ...]
    reward: float


@dataclass
class Efficacy:
    ref: str
    skill_id: str
    version: int
    uses: int = 0
    successes: float = 0.0
    failures: float = 0.0
    mean_with: float | None = None
    n_without: int = 0
    mean_without: float | None = None
    effect: float | None = None
    effect_se: float | None = None
    baseline: str = "similar"  # similar | all

    def row(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "skill_id": self.skill_id,
            "version": self.version,
            "uses": self.uses,
            "successes": self.successes,
            "failures": self.failures,
            "mean_with": self.mean_with,
            "n_without": self.n_without,
            "mean_without": self.mean_without,
            "effect": self.effect,
            "effect_se": self.effect_se,
            "updated_at": datetime.now(UTC),
        }


@dataclass
class Retirement:
    skill: Skill
    efficacy: Efficacy
    reason: str


@dataclass
class EfficacyReport:
    stats: list[Efficacy] = field(default_factory=list)
    retire: list[Retirement] = field(default_factory=list)
    turns: int = 0
    verdicts: list[Verdict] = field(default_factory=list)  # on proposed skills


def rewarded_turns_sql(window_days: int, limit: int) -> str:
    return f"""
SELECT t.turn_id, t.request, t.injected_skills, r.reward
FROM turns t JOIN turn_rewards r ON r.turn_id = t.turn_id
WHERE r.reward IS NOT NULL
  AND t.ts_start >= now() - INTERVAL {int(window_days)} DAY
ORDER BY t.ts_start DESC
LIMIT {int(limit)}
"""


def to_rewarded(rows: Sequence[tuple[Any, ...]]) -> list[RewardedTurn]:
    out = []
    for turn_id, request, injected, reward in rows:
        body = orjson.loads(request) if isinstance(request, str | bytes) else request
        messages = body.get("messages") if isinstance(body, dict) else None
        out.append(
            RewardedTurn(turn_id, extract_query(messages), tuple(injected or ()), float(reward))
        )
    return out


def _mean_var(values: np.ndarray) -> tuple[float, float]:
    mean = float(values.mean())
    var = float(values.var(ddof=1)) if len(values) > 1 else 1.0
    return mean, max(var, VAR_FLOOR)


def compute(
    skills: Sequence[Skill],
    vectors: dict[str, np.ndarray],
    turns: Sequence[RewardedTurn],
    embed: Callable[[list[str]], np.ndarray],
    *,
    min_similarity: float,
) -> list[Efficacy]:
    """Efficacy of each skill version in `skills` over `turns` (pure but for `embed`)."""
    if not turns:
        return [Efficacy(s.ref, s.skill_id, s.version) for s in skills]
    rewards = np.array([t.reward for t in turns])
    qvecs = embed([t.query for t in turns])
    out = []
    for skill in skills:
        eff = Efficacy(skill.ref, skill.skill_id, skill.version)
        injected = np.array([skill.ref in t.injected for t in turns])
        with_r = rewards[injected]
        eff.uses = int(injected.sum())
        if eff.uses:
            s = (with_r + 1) / 2
            eff.successes, eff.failures = float(s.sum()), float((1 - s).sum())
        vec = vectors.get(skill.ref)
        similar = (qvecs @ vec >= min_similarity) if vec is not None else np.zeros(len(turns), bool)
        without = similar & ~injected
        if without.sum() < MIN_WITHOUT:
            without, eff.baseline = ~injected, "all"
        without_r = rewards[without]
        eff.n_without = int(without.sum())
        if eff.uses:
            mw, vw = _mean_var(with_r)
            eff.mean_with = mw
            if eff.n_without:
                mo, vo = _mean_var(without_r)
                eff.mean_without = mo
                eff.effect = mw - mo
                eff.effect_se = math.sqrt(vw / eff.uses + vo / eff.n_without)
            else:  # nothing to compare with: against a neutral reward of 0
                eff.effect = mw
                eff.effect_se = math.sqrt(vw / eff.uses)
        elif eff.n_without:
            eff.mean_without = float(without_r.mean())
        out.append(eff)
    return out


def retirements(
    skills: Sequence[Skill], stats: Sequence[Efficacy], *, min_uses: int, z: float
) -> list[Retirement]:
    """Active, unpinned skills whose effect is confidently negative."""
    by_ref = {e.ref: e for e in stats}
    out = []
    for skill in skills:
        eff = by_ref.get(skill.ref)
        if (
            skill.status != "active"
            or skill.pinned
            or eff is None
            or eff.effect is None
            or eff.effect_se is None
            or eff.uses < min_uses
        ):
            continue
        upper = eff.effect + z * eff.effect_se
        if upper < 0:
            out.append(
                Retirement(
                    skill,
                    eff,
                    (
                        f"auto-retired: mean reward {eff.mean_with:+.3f} with vs "
                        f"{(eff.mean_without or 0.0):+.3f} without ({eff.baseline} turns, "
                        f"n={eff.uses}/{eff.n_without}); effect {eff.effect:+.3f}, upper bound "
                        f"{upper:+.3f} < 0 at z={z}"
                    ),
                )
            )
    return out


@dataclass
class Verdict:
    """What the efficacy bar decided about one proposed skill version."""

    skill: Skill
    efficacy: Efficacy
    event: str  # promoted | rejected
    reason: str


def verdicts(
    skills: Sequence[Skill], stats: Sequence[Efficacy], *, min_uses: int, z: float, auto: bool
) -> list[Verdict]:
    """Proposed versions whose measured effect (with − without, in the sessions they reached)
    clears the bar — promoted when `auto` and the intent scan passed — or is confidently
    negative (rejected, whatever the mode: a quarantined skill that hurts never ships)."""
    by_ref = {e.ref: e for e in stats}
    out = []
    for skill in skills:
        eff = by_ref.get(skill.ref)
        if (
            skill.status != "proposed"
            or eff is None
            or eff.effect is None
            or eff.effect_se is None
            or eff.uses < min_uses
        ):
            continue
        lower, upper = eff.effect - z * eff.effect_se, eff.effect + z * eff.effect_se
        measured = (
            f"mean reward {eff.mean_with:+.3f} with vs {(eff.mean_without or 0.0):+.3f} "
            f"without (n={eff.uses}/{eff.n_without}); effect {eff.effect:+.3f}"
        )
        if upper < 0:
            out.append(
                Verdict(
                    skill,
                    eff,
                    "rejected",
                    f"auto-rejected: {measured}, upper bound {upper:+.3f} < 0",
                )
            )
        elif lower > 0 and auto and skill.scan.startswith("safe:"):
            out.append(
                Verdict(
                    skill,
                    eff,
                    "promoted",
                    f"auto-promoted: {measured}, lower bound {lower:+.3f} > 0 at "
                    f"z={z}; intent scan {skill.scan}",
                )
            )
    return out
