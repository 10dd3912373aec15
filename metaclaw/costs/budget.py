"""The daily budget's decision: how many judge votes, and whether the critic may call (pure).

Why degrade in steps: a judge panel of m votes costs m times a single vote, so near the budget
one vote per turn keeps scoring going at a third of the cost (a noisier verdict, recorded as
such by its scorer version `.../m1`); at the budget the judge and the critic stop, the reward
model and explicit feedback keep scoring, and the next UTC day starts afresh. Only the
pipeline's own calls (judge, critic) count: users' calls are theirs to pay.
"""

from __future__ import annotations

from dataclasses import dataclass

PIPELINE_ROLES = ("judge", "critic")


@dataclass(frozen=True, slots=True)
class DailyBudget:
    spent_usd: float  # the pipeline's priced calls since 00:00 UTC
    budget_usd: float | None  # None: no limit
    degrade_share: float

    @property
    def exhausted(self) -> bool:
        return self.budget_usd is not None and self.spent_usd >= self.budget_usd

    @property
    def degraded(self) -> bool:
        limit = self.budget_usd
        return limit is not None and self.spent_usd >= self.degrade_share * limit

    def judge_votes(self, votes: int) -> int:
        """Votes per turn the judge may cast now (0: no judge calls today)."""
        if self.exhausted:
            return 0
        return 1 if self.degraded else votes

    def note(self) -> str | None:
        """Why the pipeline is holding back, for the run's log and report; None when it is not."""
        if self.budget_usd is None or not self.degraded:
            return None
        spent = f"${self.spent_usd:.4f} of ${self.budget_usd:.2f}"
        if self.exhausted:
            return f"daily budget reached: {spent}; no judge or critic calls until 00:00 UTC"
        share = self.spent_usd / self.budget_usd
        return f"daily budget {share:.0%} spent ({spent}): one judge vote per turn"
