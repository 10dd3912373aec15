"""From rewarded ledger turns to training samples: routing, advantages, micro-batches (pure).

Routing is the honest on/off-policy split (docs/training.md, "The step"):
- **On-policy** turns (served by our policy, carrying the exact prompt/completion token ids and
  the sampler's logprobs) feed the RL losses (importance_sampling, ppo, cispo) and on-policy
  distillation. They use the served token ids as is — nothing is re-rendered.
- **Off-policy** turns (served by an upstream API, backfilled, or policy turns missing their
  logprobs) carry no sampler logprobs of our policy. They feed cross-entropy (SFT) when their
  reward is at least `min_reward_for_sft`, and nothing else: no importance-sampling loss is ever
  given made-up logprobs.
- The learner scores the untempered full softmax (Tinker semantics), so a policy turn served at
  a temperature other than 1, with top_p < 1 (the server renormalises its logprobs inside the
  nucleus) or with a top_k is not importance-weighted either: its logprobs are of another
  distribution. It is routed like an off-policy turn and counted in `notes["sampling_mismatch"]`.
  The served T and top_p come from the policy's trace (`turns.sampling_*`); older rows fall back
  to the request's values.
- **Staleness**: a policy turn is importance-weighted only when the checkpoint that served it is
  on the learner's lineage (`SelectionPolicy.lineage`, newest first, None = base model) at most
  `max_staleness` steps behind the learner. Otherwise — another branch, a rolled-back or older
  checkpoint — it is off-policy (`notes["stale_policy"]`, `notes["other_lineage"]`). Each RL
  sample carries its staleness, recorded in the step's metrics.
- **Support/query separation**: on-policy turns served under an older `skill_set_version` than
  the current one saw a different prompt distribution (the skills changed since), so they are
  excluded from on-policy updates and counted as `stale_skill_set`.

Advantages (RL losses): GRPO-style centring `A = r − mean(r_group)` within a group of turns that
share the exact prompt tokens (and skill-set version) when the group has ≥2 turns with differing
rewards. Otherwise — a single turn (the usual case for live traffic) or a group whose rewards
are all equal, where centring would silently give zero — `A = r − baseline`, the baseline
being an EMA of the steps' mean RL rewards (`TrainHistory.baseline`; 0 before the first
step). A turn whose advantage is still exactly 0 carries no signal; it is skipped as
`zero_advantage` and left unconsumed, so a batch of only such turns never becomes a silent
zero-gradient step — unless its hint states a rule (`SelectionPolicy.keep_turns`): the step then
trains on rule-holding replies to its prompt, the signal a flat reward cannot give.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from tinker import types

from metaclaw.training.datums import rl_datum, sft_datum
from metaclaw.training.render import TooLongError

RL_LOSS_FNS = ("importance_sampling", "ppo", "cispo")
ZERO = 1e-9

# (prompt, completion, messages dropped or cut to fit max_seq_len)
Renderer = Callable[["Turn"], tuple[list[int], list[int], int]]
TEMPERATURE, TOP_P = 1.0, 1.0  # what the learner reproduces: the untempered full softmax


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return None
    return value


def _logprobs(values: Any) -> list[float] | None:
    """Sampler logprobs, or None when absent or incomplete (JSON stores NaN/inf as null):
    a turn with holes in its logprobs cannot be importance-weighted, so it is off-policy."""
    if not values or any(v is None for v in values):
        return None
    return [float(v) for v in values]


@dataclass(frozen=True)
class Turn:
    """The columns of a `turns` row (joined with `turn_rewards`) that training reads."""

    turn_id: str
    ts: float = 0.0
    client: str | None = None
    served_by: str | None = None
    source: str | None = None
    request: dict[str, Any] | None = None
    completion_text: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    prompt_token_ids: list[int] | None = None
    completion_token_ids: list[int] | None = None
    completion_logprobs: list[float] | None = None
    policy_checkpoint: str | None = None
    skill_set_version: int | None = None
    reward: float | None = None
    reward_source: str | None = None
    sampling_temperature: float | None = None
    sampling_top_p: float | None = None
    injected_text: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Turn:
        ts = row.get("ts_start")
        ts_value = ts.timestamp() if isinstance(ts, datetime) else float(ts or 0)
        reward = row.get("reward")
        return cls(
            turn_id=row["turn_id"],
            ts=ts_value,
            client=row.get("client"),
            served_by=row.get("served_by"),
            source=row.get("source"),
            request=_json(row.get("request")),
            completion_text=row.get("completion_text"),
            tool_calls=_json(row.get("tool_calls")) or None,
            prompt_token_ids=list(row["prompt_token_ids"]) if row.get("prompt_token_ids") else None,
            completion_token_ids=list(row["completion_token_ids"])
            if row.get("completion_token_ids")
            else None,
            completion_logprobs=_logprobs(row.get("completion_logprobs")),
            policy_checkpoint=row.get("policy_checkpoint"),
            skill_set_version=row.get("skill_set_version"),
            reward=None if reward is None else float(reward),
            reward_source=row.get("reward_source"),
            sampling_temperature=row.get("sampling_temperature"),
            sampling_top_p=row.get("sampling_top_p"),
            injected_text=row.get("injected_text"),
        )

    def _requested(self, key: str, default: float) -> float:
        value = self.request.get(key) if isinstance(self.request, dict) else None
        return float(value) if isinstance(value, int | float) and value is not None else default

    @property
    def temperature(self) -> float:
        """The temperature served at: the policy's trace, else the request's (default 1)."""
        if self.sampling_temperature is not None:
            return float(self.sampling_temperature)
        return self._requested("temperature", 1.0)

    @property
    def top_p(self) -> float:
        if self.sampling_top_p is not None:
            return float(self.sampling_top_p)
        return self._requested("top_p", 1.0)

    @property
    def top_k(self) -> float:
        """A top_k the client asked for (not OpenAI's API; some clients send it anyway)."""
        return self._requested("top_k", 0.0)

    @property
    def sampled_as_learner_scores(self) -> bool:
        """T = 1, top_p = 1, no top_k: the sampler's logprobs are of the learner's softmax."""
        return (
            abs(self.temperature - TEMPERATURE) < 1e-6 and self.top_p >= TOP_P and self.top_k <= 0
        )

    @property
    def is_backfill(self) -> bool:
        return (self.source or "").startswith("backfill:")

    @property
    def has_policy_tokens(self) -> bool:
        return bool(
            self.prompt_token_ids
            and self.completion_token_ids
            and self.completion_logprobs
            and len(self.completion_logprobs) == len(self.completion_token_ids)
        )

    @property
    def on_policy(self) -> bool:
        """Served by our policy, live, with the exact tokens and sampler logprobs."""
        return self.served_by == "policy" and not self.is_backfill and self.has_policy_tokens


@dataclass
class Sample:
    """One training sequence built from one turn."""

    turn_id: str
    kind: Literal["rl", "sft"]
    prompt: list[int]
    completion: list[int]
    ts: float = 0.0
    reward: float | None = None
    sampler_logprobs: list[float] | None = None
    advantage: float | None = None
    token_advantages: list[float] | None = None
    advantage_method: str | None = None
    group: str | None = None
    staleness: int | None = None  # RL: steps between the serving checkpoint and the learner
    truncated: int = 0  # SFT: messages dropped or cut to fit max_seq_len

    @property
    def tokens(self) -> int:
        return len(self.prompt) + len(self.completion)

    def datum(self) -> types.Datum:
        if self.kind == "sft":
            return sft_datum(self.prompt, self.completion)
        if self.sampler_logprobs is None:
            raise ValueError(f"RL sample {self.turn_id} has no sampler logprobs")
        advantages = self.token_advantages if self.token_advantages is not None else self.advantage
        if advantages is None:
            raise ValueError(f"RL sample {self.turn_id} has no advantage yet")
        return rl_datum(self.prompt, self.completion, self.sampler_logprobs, advantages)


@dataclass
class SelectionPolicy:
    loss_fn: str
    min_reward_for_sft: float = 0.5
    current_skill_set_version: int | None = None
    baseline: float = 0.0
    max_seq_len: int = 4096
    # checkpoint ids from the learner's state back to the base model (None); a policy turn is
    # importance-weighted only when it was served by one of the first max_staleness + 1
    lineage: tuple[str | None, ...] = (None,)
    max_staleness: int = 4
    # turns whose zero-advantage RL sample still goes into a batch: their hint states a rule,
    # so the step trains on rule-holding replies to their prompt (trainer._rule_rollouts)
    keep_turns: frozenset[str] = frozenset()


@dataclass
class Selection:
    samples: list[Sample] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    stale_turn_ids: list[str] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)  # routed, not skipped


def _group_key(turn: Turn) -> str:
    digest = hashlib.sha256(json.dumps([turn.skill_set_version, turn.prompt_token_ids]).encode())
    return digest.hexdigest()[:16]


def _sft(
    turn: Turn, policy: SelectionPolicy, render: Renderer | None, selection: Selection
) -> Sample | None:
    if turn.reward is None:
        selection.skipped["no_reward"] += 1
        return None
    if turn.reward < policy.min_reward_for_sft:
        selection.skipped["below_sft_threshold"] += 1
        return None
    truncated = 0
    if turn.served_by == "policy" and turn.prompt_token_ids and turn.completion_token_ids:
        prompt, completion = list(turn.prompt_token_ids), list(turn.completion_token_ids)
    else:
        if render is None or turn.request is None:
            selection.skipped["unrenderable"] += 1
            return None
        try:
            prompt, completion, truncated = render(turn)
        except TooLongError:
            selection.skipped["too_long"] += 1
            return None
        except ValueError:
            selection.skipped["unrenderable"] += 1
            return None
    if truncated:
        selection.notes["truncated"] += 1
    return Sample(
        turn.turn_id, "sft", prompt, completion, ts=turn.ts, reward=turn.reward, truncated=truncated
    )


def _importance_weighted(turn: Turn, policy: SelectionPolicy, selection: Selection) -> bool:
    """On-policy, sampled as the learner scores, and served by its recent lineage (counted)."""
    if not turn.on_policy:
        return False
    if not turn.sampled_as_learner_scores:
        # its logprobs are of another distribution than the one the learner scores: not
        # importance-weighted (it may still be SFT data when its reward is high enough)
        selection.notes["sampling_mismatch"] += 1
        return False
    key = turn.policy_checkpoint or None
    if key not in policy.lineage:
        selection.notes["other_lineage"] += 1
        return False
    if policy.lineage.index(key) > policy.max_staleness:
        selection.notes["stale_policy"] += 1
        return False
    return True


def select_samples(
    turns: Iterable[Turn], policy: SelectionPolicy, render: Renderer | None = None
) -> Selection:
    """Route each turn to an RL sample, an SFT sample, or a counted skip reason."""
    selection = Selection()
    rl_loss = policy.loss_fn in RL_LOSS_FNS or policy.loss_fn == "distillation"
    for turn in turns:
        sample: Sample | None
        if rl_loss and _importance_weighted(turn, policy, selection):
            current = policy.current_skill_set_version
            if (
                current is not None
                and turn.skill_set_version is not None
                and turn.skill_set_version < current
            ):
                selection.skipped["stale_skill_set"] += 1
                selection.stale_turn_ids.append(turn.turn_id)
                continue
            if policy.loss_fn != "distillation" and turn.reward is None:
                selection.skipped["no_reward"] += 1
                continue
            sample = Sample(
                turn.turn_id,
                "rl",
                list(turn.prompt_token_ids or []),
                list(turn.completion_token_ids or []),
                ts=turn.ts,
                reward=turn.reward,
                sampler_logprobs=list(turn.completion_logprobs or []),
                group=_group_key(turn),
                staleness=policy.lineage.index(turn.policy_checkpoint or None),
            )
        else:
            sample = _sft(turn, policy, render, selection)
        if sample is None:
            continue
        if not sample.prompt or not sample.completion:
            selection.skipped["empty_sequence"] += 1
            continue
        if sample.tokens > policy.max_seq_len:
            selection.skipped["too_long"] += 1
            continue
        selection.samples.append(sample)
    if policy.loss_fn in RL_LOSS_FNS:
        assign_advantages(selection.samples, policy.baseline)
        kept = []
        for s in selection.samples:
            if (
                s.kind == "rl"
                and abs(s.advantage or 0.0) < ZERO
                and s.turn_id not in policy.keep_turns
            ):
                selection.skipped["zero_advantage"] += 1
            else:
                kept.append(s)
        selection.samples = kept
    return selection


def assign_advantages(samples: Sequence[Sample], baseline: float) -> None:
    """GRPO centring within non-degenerate groups; `r − baseline` for the rest (in place)."""
    groups: dict[str | None, list[Sample]] = defaultdict(list)
    for s in samples:
        if s.kind == "rl":
            groups[s.group].append(s)
    for members in groups.values():
        rewards = [float(s.reward or 0.0) for s in members]
        centred = len(members) >= 2 and max(rewards) - min(rewards) > ZERO
        mean = sum(rewards) / len(rewards)
        for s, r in zip(members, rewards, strict=True):
            s.advantage = r - mean if centred else r - baseline
            s.advantage_method = "group" if centred else "baseline"


def pack_batch(samples: Sequence[Sample], batch_size: int) -> list[Sample] | None:
    """The oldest whole groups making at least `batch_size` sequences, or None if too few.

    A prompt group is never split across steps (its centring was computed over all of it), so
    a batch may exceed `batch_size` by at most one group's size minus one.
    """
    if batch_size < 1:
        raise ValueError("training.batch_size must be at least 1")
    if len(samples) < batch_size:
        return None
    ordered = sorted(samples, key=lambda s: (s.ts, s.turn_id))
    by_group: dict[str, list[Sample]] = defaultdict(list)
    order: list[str] = []
    for s in ordered:
        key = s.group if s.kind == "rl" and s.group else f"single:{s.turn_id}"
        if key not in by_group:
            order.append(key)
        by_group[key].append(s)
    batch: list[Sample] = []
    for key in order:
        batch.extend(by_group[key])
        if len(batch) >= batch_size:
            return batch
    return None
