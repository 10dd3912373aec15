"""The reward model as a pair decider for the deploy gate (`deploy.reward_model_pairs`).

Why: every pair the gate sends to the judge costs two calls (both orders). Where the reward
model in force is confident that exactly one of the two replies is good — P(good) at least
`reward_model.confidence` for one and at most 1 − that for the other, the same confidence at
which triage trusts it with a reward — the pair is decided by it in both orders, like a pair
the users' stated rule decides; every other pair goes to the judge. A decided pair is a
decided pair either way: the sign test only needs each prompt's outcome to be exchangeable
between two equal policies, which holds for any decider that sees the two replies the same
way (the model scores each reply on its own, so swapping the policies swaps its verdict).

Caveat (docs/deploy.md): the model learned from the same users' labels (and the scoring
judge's verdicts) the policy was trained on, so a policy that learned to please it passes
more easily than before a separate gate judge; hence off by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from metaclaw.config import Settings
from metaclaw.deploy.stats import Verdict
from metaclaw.scoring.adaptive import embedder_for
from metaclaw.scoring.reward_features import Embedder, features
from metaclaw.scoring.reward_model import LogisticModel, predict
from metaclaw.scoring.reward_store import current_info, load_model
from metaclaw.scoring.transcript import Msg, TurnContext, TurnRecord, normalize_request


def ranked(
    p_candidate: float, p_current: float, confidence: float
) -> tuple[Verdict, Verdict] | None:
    """(verdict with the candidate as A, as B) when the model is sure exactly one reply is
    good; None otherwise (both good, both bad, or either unsure: the judge decides)."""
    if p_candidate >= confidence and p_current <= 1.0 - confidence:
        return "A", "B"
    if p_current >= confidence and p_candidate <= 1.0 - confidence:
        return "B", "A"
    return None


def gate_context(messages: Sequence[dict[str, Any]], reply: str) -> TurnContext:
    """A gate reply as the reward model sees a turn: the prompt, the reply, no next state
    (nothing happened after it; the model's uncertainty grows where that is unlike its
    labels, so such pairs go to the judge)."""
    turn = TurnRecord("gate", "gate", 0.0, completion_text=reply, finish_reason="stop")
    return TurnContext(
        turn, normalize_request({"messages": list(messages)}), Msg("assistant", reply)
    )


@dataclass(frozen=True)
class RewardModelPairs:
    """The reward model in force, deciding the pairs it is sure of."""

    model: LogisticModel
    version: str
    embedder: Embedder
    confidence: float

    def __call__(
        self, messages: Sequence[dict[str, Any]], candidate: str, current: str
    ) -> tuple[Verdict, Verdict] | None:
        contexts = [gate_context(messages, candidate), gate_context(messages, current)]
        p = predict(self.model, features(contexts, self.embedder)).p
        return ranked(float(p[0]), float(p[1]), self.confidence)


def pair_decider(settings: Settings) -> RewardModelPairs | None:
    """The decider when `deploy.reward_model_pairs` is on and a reward model is in force."""
    if not (settings.deploy.reward_model_pairs and settings.reward_model.enabled):
        return None
    directory = settings.paths.reward_models
    info = current_info(directory)
    if info is None:
        return None
    return RewardModelPairs(
        load_model(directory, info),
        info.version,
        embedder_for(settings),
        settings.reward_model.confidence,
    )
