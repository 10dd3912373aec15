"""From rewarded ledger turns to training samples: routing, advantages, micro-batches (pure).

Routing is the honest on/off-policy split of DESIGN.md:
- **On-policy** turns (served by our policy, carrying the exact prompt/completion token ids and
  the sampler's logprobs) feed the RL losses (importance_sampling, ppo, cispo) and on-policy
  distillation. They use the served token ids as is — nothing is re-rendered.
- **Off-policy** turns (served by an upstream API, backfilled, or policy turns missing their
  logprobs) carry no sampler logprobs of our policy. They feed cross-entropy (SFT) when their
  reward is at least `min_reward_for_sft`, and nothing else: no importance-sampling loss is ever
  given made-up logprobs.
- The learner scores tokens at temperature 1 (Tinker semantics), so a policy turn whose request
  asked for another temperature than `training.temperature` (default 1) is not importance-weighted
  either (its logprobs are of a different distribution); it is routed like an off-policy turn and
  counted in `notes["temperature_mismatch"]`.
- **Support/query separation**: on-policy turns served under an older `skill_set_version` than
  the current one saw a different prompt distribution (the skills changed since), so they are
  excluded from on-policy updates and counted as `stale_skill_set`.

Advantages (RL losses): GRPO-style centring `A = r − mean(r_group)` within a group of turns that
share the exact prompt tokens (and skill-set version) when the group has ≥2 turns with differing
rewards. Otherwise — a single turn (the usual case for live traffic) or a group whose rewards
are all equal, where centring would silently give zero — `A = r − baseline`, the baseline being
the running mean reward of every RL turn trained so far (0 before the first step). A turn whose
advantage is still exactly 0 carries no signal; it is skipped as `zero_advantage` and left
unconsumed, so a batch of only such turns never becomes a silent zero-gradient step.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tinker import types

from metaclaw.training.datums import rl_datum, sft_datum

RL_LOSS_FNS = ("importance_sampling", "ppo", "cispo")
ZERO = 1e-9

Renderer = Callable[["Turn"], tuple[list[int], list[int]]]


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

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Turn:
        ts = row.get("ts_start")
        ts_value = ts.timestamp() if hasattr(ts, "timestamp") else float(ts or 0)
        reward = row.get("reward")
        return cls(
            turn_id=row["turn_id"],
            ts=ts_value,
            served_by=row.get("served_by"),
            source=row.get("source"),
            request=_json(row.get("request")),
            completion_text=row.get("completion_text"),
            tool_calls=_json(row.get("tool_calls")) or None,
            prompt_token_ids=list(row["prompt_token_ids"]) if row.get("prompt_token_ids") else None,
            completion_token_ids=list(row["completion_token_ids"])
            if row.get("completion_token_ids") else None,
            completion_logprobs=_logprobs(row.get("completion_logprobs")),
            policy_checkpoint=row.get("policy_checkpoint"),
            skill_set_version=row.get("skill_set_version"),
            reward=None if reward is None else float(reward),
            reward_source=row.get("reward_source"),
        )

    @property
    def temperature(self) -> float:
        """The sampling temperature the request asked for (the OpenAI default is 1)."""
        value = self.request.get("temperature") if isinstance(self.request, dict) else None
        return float(value) if isinstance(value, int | float) else 1.0

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

    @property
    def tokens(self) -> int:
        return len(self.prompt) + len(self.completion)

    def datum(self) -> types.Datum:
        if self.kind == "sft":
            return sft_datum(self.prompt, self.completion)
        if self.sampler_logprobs is None:
            raise ValueError(f"RL sample {self.turn_id} has no sampler logprobs")
        advantages = self.token_advantages if self.token_advantages is not None \
            else self.advantage
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
    temperature: float = 1.0


@dataclass
class Selection:
    samples: list[Sample] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    stale_turn_ids: list[str] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)  # routed, not skipped


def _group_key(turn: Turn) -> str:
    digest = hashlib.sha256(json.dumps([turn.skill_set_version, turn.prompt_token_ids]).encode())
    return digest.hexdigest()[:16]


def _sft(turn: Turn, policy: SelectionPolicy, render: Renderer | None,
         selection: Selection) -> Sample | None:
    if turn.reward is None:
        selection.skipped["no_reward"] += 1
        return None
    if turn.reward < policy.min_reward_for_sft:
        selection.skipped["below_sft_threshold"] += 1
        return None
    if turn.served_by == "policy" and turn.prompt_token_ids and turn.completion_token_ids:
        prompt, completion = list(turn.prompt_token_ids), list(turn.completion_token_ids)
    else:
        if render is None or turn.request is None:
            selection.skipped["unrenderable"] += 1
            return None
        try:
            prompt, completion = render(turn)
        except ValueError:
            selection.skipped["unrenderable"] += 1
            return None
    return Sample(turn.turn_id, "sft", prompt, completion, ts=turn.ts, reward=turn.reward)


def select_samples(turns: Iterable[Turn], policy: SelectionPolicy,
                   render: Renderer | None = None) -> Selection:
    """Route each turn to an RL sample, an SFT sample, or a counted skip reason."""
    selection = Selection()
    rl_loss = policy.loss_fn in RL_LOSS_FNS or policy.loss_fn == "distillation"
    for turn in turns:
        sample: Sample | None
        importance_weighted = rl_loss and turn.on_policy
        if importance_weighted and abs(turn.temperature - policy.temperature) > 1e-6:
            # its logprobs are of another distribution than the one the learner scores: not
            # importance-weighted (it may still be SFT data when its reward is high enough)
            selection.notes["temperature_mismatch"] += 1
            importance_weighted = False
        if importance_weighted:
            current = policy.current_skill_set_version
            if (current is not None and turn.skill_set_version is not None
                    and turn.skill_set_version < current):
                selection.skipped["stale_skill_set"] += 1
                selection.stale_turn_ids.append(turn.turn_id)
                continue
            if policy.loss_fn != "distillation" and turn.reward is None:
                selection.skipped["no_reward"] += 1
                continue
            sample = Sample(
                turn.turn_id, "rl", list(turn.prompt_token_ids or []),
                list(turn.completion_token_ids or []), ts=turn.ts, reward=turn.reward,
                sampler_logprobs=list(turn.completion_logprobs or []), group=_group_key(turn),
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
            if s.kind == "rl" and abs(s.advantage or 0.0) < ZERO:
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
