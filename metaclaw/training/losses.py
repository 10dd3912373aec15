"""Loss formulas and the per-token signals that feed them, as pure functions.

These are Tinker's built-in losses (reference/tinker-api.md §3), written once so the local
backend, the in-process fake and the tests share one definition. Every loss is token-level and
**summed** over tokens (and, by the caller, over datums): `loss = -Σ_t objective_t`. There is
no mean, so the learning rate absorbs the batch size exactly as it does on Tinker.

Notation: `lp` learner log-probabilities of the target tokens (carries the gradient), `q` the
sampler's log-probabilities of the same tokens (recorded when the turn was served), `A` the
per-token advantage, `w` the per-token weight. `ratio = exp(lp - q)`.

On-policy distillation is not a loss of its own: it is `importance_sampling` with the
per-token advantage `kl_coef · (teacher_lp - student_lp)` (reverse-KL on the student's own
tokens; tinker-cookbook `distillation/train_on_policy.py`, OpenClaw-RL OPD).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

RL_LOSSES = ("importance_sampling", "ppo", "cispo", "dro")
LOSSES = ("cross_entropy", *RL_LOSSES)

# Ratio bounds, not ε: PPO's ε = 0.2 (Tinker docs); CISPO's current documented defaults.
DEFAULT_CLIP: dict[str, tuple[float, float]] = {"ppo": (0.8, 1.2), "cispo": (0.0, 4.0)}
DEFAULT_DRO_BETA = 0.05

REQUIRED_INPUTS: dict[str, tuple[str, ...]] = {
    "cross_entropy": ("target_tokens", "weights"),
    **{name: ("target_tokens", "logprobs", "advantages") for name in RL_LOSSES},
}


class LossInputError(ValueError):
    """A datum lacks what its loss needs, or its tensors do not line up."""


def check_inputs(loss_fn: str, inputs: Mapping[str, object]) -> None:
    """Fail early, naming the missing key, instead of deep inside a forward pass."""
    if loss_fn not in REQUIRED_INPUTS:
        raise LossInputError(f"unknown loss_fn {loss_fn!r}; supported: {', '.join(LOSSES)}")
    missing = [k for k in REQUIRED_INPUTS[loss_fn] if k not in inputs]
    if missing:
        raise LossInputError(f"loss_fn {loss_fn!r} needs loss_fn_inputs {missing}")


def clip_bounds(loss_fn: str, config: Mapping[str, float | str] | None) -> tuple[float, float]:
    low, high = DEFAULT_CLIP.get(loss_fn, (0.0, math.inf))
    config = config or {}
    return (
        float(config.get("clip_low_threshold", low)),
        float(config.get("clip_high_threshold", high)),
    )


def loss_sum(
    loss_fn: str,
    lp: torch.Tensor,
    inputs: Mapping[str, torch.Tensor],
    config: Mapping[str, float | str] | None = None,
) -> torch.Tensor:
    """The summed loss of one datum; `lp` has the shape of `inputs['target_tokens']`."""
    if loss_fn == "cross_entropy":
        return -(lp * inputs["weights"]).sum()
    q, adv = inputs["logprobs"], inputs["advantages"]
    if loss_fn == "importance_sampling":
        ratio = torch.exp(lp - q)
        return -(ratio * adv).sum()
    if loss_fn == "ppo":
        low, high = clip_bounds(loss_fn, config)
        ratio = torch.exp(lp - q)
        return -torch.minimum(ratio * adv, torch.clamp(ratio, low, high) * adv).sum()
    if loss_fn == "cispo":
        low, high = clip_bounds(loss_fn, config)
        ratio = torch.exp(lp - q)
        return -(torch.clamp(ratio, low, high).detach() * lp * adv).sum()
    if loss_fn == "dro":
        beta = float((config or {}).get("beta", DEFAULT_DRO_BETA))
        # the squared penalty is not zero where q = adv = 0 (the prompt padding of a datum,
        # metaclaw.training.datums): only completion positions may be pulled toward q
        sampled = ((q != 0) | (adv != 0)).to(lp.dtype)
        return -((lp * adv - 0.5 * beta * (lp - q) ** 2) * sampled).sum()
    raise LossInputError(f"unknown loss_fn {loss_fn!r}; supported: {', '.join(LOSSES)}")


def distillation_advantages(
    teacher_lp: Sequence[float], student_lp: Sequence[float], kl_coef: float
) -> list[float]:
    """Per-token advantage `kl_coef · (log π_teacher − log π_student)` on the student's tokens.

    Positive where the teacher likes the token more than the student did, so importance
    sampling pushes the student toward the teacher (a reverse-KL step).
    """
    if len(teacher_lp) != len(student_lp):
        raise LossInputError(
            f"teacher gave {len(teacher_lp)} logprobs for {len(student_lp)} student tokens; "
            "teacher and student must share the tokenizer and the rendered prompt"
        )
    return [kl_coef * (t - s) for t, s in zip(teacher_lp, student_lp, strict=True)]


def sampler_learner_kl(
    sampler_lp: Sequence[float], learner_lp: Sequence[float]
) -> tuple[float, float]:
    """(`mean(q − p)`, `½·mean((q − p)²)`) over sampled tokens: Tinker's kl_sample_train v1/v2.

    Healthy values are ~1e-3; a large value means the turns were not sampled from (a recent
    version of) this learner — wrong checkpoint lineage, a tokenizer mismatch, or divergence.
    """
    if len(sampler_lp) != len(learner_lp):
        raise LossInputError("sampler and learner logprobs differ in length")
    if not sampler_lp:
        return 0.0, 0.0
    diffs = [q - p for q, p in zip(sampler_lp, learner_lp, strict=True)]
    return sum(diffs) / len(diffs), 0.5 * sum(d * d for d in diffs) / len(diffs)
