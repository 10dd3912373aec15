"""Triage: which turns the reward model scores and which go to the judge (pure).

Why: the judge costs m calls a turn and the reward model nothing; the model takes the turns it
is confident about (posterior-averaged P(good) or P(bad) at least `reward_model.confidence`)
and the judge gets the rest. A share of the confident turns (`reward_model.audit_share`) goes
to the judge anyway: it measures the model's agreement on exactly the turns it would have
taken, and its verdicts are the labels the next model learns from — without them the model
would only ever be retrained on the turns it found hard. Audit picks are a hash of the turn
id, so a re-run makes the same choice. An uncertain turn may be settled by a single vote that
agrees with the model's lean (`Decision.confirmed_by`, `reward_model.one_vote_confirms`);
audited turns always get the whole panel, so the audit stays independent of the model.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from metaclaw.scoring.reward_model import Predictions
from metaclaw.scoring.votes import Verdict

Route = Literal["model", "uncertain", "audit"]


def audited(turn_id: str, share: float) -> bool:
    """Whether this turn belongs to the audit sample (stable: a hash of its id)."""
    if share <= 0.0:
        return False
    digest = hashlib.blake2b(turn_id.encode(), digest_size=8, person=b"rm-audit").digest()
    return int.from_bytes(digest, "big") / 2**64 < share


@dataclass(frozen=True, slots=True)
class Decision:
    turn_id: str
    route: Route
    p: float  # posterior-averaged P(good)
    logit_std: float

    @property
    def to_judge(self) -> bool:
        return self.route != "model"

    @property
    def confidence(self) -> float:
        return max(self.p, 1.0 - self.p)

    @property
    def sign(self) -> int:
        """The verdict the model leans to: +1, -1, or 0 when it has no lean at all."""
        return 1 if self.p > 0.5 else -1 if self.p < 0.5 else 0

    def confirmed_by(self, verdict: Verdict | None) -> bool:
        """Whether one judge vote settles an uncertain turn: it agrees with the model's lean.

        Why that is enough: two independent witnesses agreeing is strong evidence even when
        each is unsure — a vote right 80 % of the time that agrees with a model leaning right
        65 % of the time is right ~88 % of the time (odds 4 × 1.9), about what a 3-vote panel
        is (~90 %), for a third of its calls. Where they disagree the rest of the panel is
        asked, so the model never overrules a vote on its own."""
        return verdict is not None and self.sign != 0 and verdict.value == self.sign

    def details(self, version: str) -> dict[str, object]:
        """What the reward row (or the judge row of an audited turn) records of the model."""
        return {
            "model_version": version,
            "p_good": round(self.p, 4),
            "confidence": round(self.confidence, 4),
            "logit_std": round(self.logit_std, 4),
            "route": self.route,
        }


def triage(
    turn_ids: Sequence[str], predictions: Predictions, confidence: float, audit_share: float
) -> list[Decision]:
    """One decision per turn, in the given order."""
    out: list[Decision] = []
    for i, turn_id in enumerate(turn_ids):
        p = float(predictions.p[i])
        route: Route
        if max(p, 1.0 - p) < confidence:
            route = "uncertain"
        elif audited(turn_id, audit_share):
            route = "audit"
        else:
            route = "model"
        out.append(Decision(turn_id, route, p, float(predictions.logit_std[i])))
    return out
