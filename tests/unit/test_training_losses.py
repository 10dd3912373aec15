"""Loss formulas and datum construction against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from metaclaw.training.datums import completion_span, rl_datum, sft_datum
from metaclaw.training.losses import (
    LossInputError,
    check_inputs,
    distillation_advantages,
    loss_sum,
    sampler_learner_kl,
)

LN = math.log


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_cross_entropy_is_the_weighted_negative_sum() -> None:
    lp = t(-1.0, -2.0, -0.5)
    assert loss_sum("cross_entropy", lp, {"weights": t(0, 1, 1)}).item() == pytest.approx(2.5)


def test_importance_sampling_weights_advantages_by_the_ratio() -> None:
    # ratio = [0.5/0.25, 0.25/0.25] = [2, 1]; loss = -(2·1 + 1·2) = -4
    lp = t(LN(0.5), LN(0.25))
    inputs = {"logprobs": t(LN(0.25), LN(0.25)), "advantages": t(1.0, 2.0)}
    assert loss_sum("importance_sampling", lp, inputs).item() == pytest.approx(-4.0)


def test_ppo_clips_the_ratio_and_zeroes_the_clipped_gradient() -> None:
    # ratio = [2, 0.5], A = [1, -1], bounds [0.8, 1.2]:
    # min(2, 1.2) = 1.2 ; min(-0.5, -0.8) = -0.8 → loss = -(1.2 - 0.8) = -0.4
    lp = t(LN(0.5), LN(0.125)).requires_grad_()
    inputs = {"logprobs": t(LN(0.25), LN(0.25)), "advantages": t(1.0, -1.0)}
    loss = loss_sum("ppo", lp, inputs)
    assert loss.item() == pytest.approx(-0.4)
    loss.backward()
    assert lp.grad is not None and lp.grad.tolist() == [0.0, 0.0]  # both terms are clipped
    custom = loss_sum("ppo", lp, inputs, {"clip_low_threshold": 0.4, "clip_high_threshold": 3})
    # unclipped now: -(2·1 + 0.5·-1) = -1.5
    assert custom.item() == pytest.approx(-1.5)


def test_cispo_uses_the_clipped_ratio_as_a_constant_weight() -> None:
    # ratio = [2, 0.5] clamped to [0, 1.5] → [1.5, 0.5];
    # loss = -(1.5·ln0.5·1 + 0.5·ln0.125·1) = 3·ln2 ≈ 2.0794
    lp = t(LN(0.5), LN(0.125)).requires_grad_()
    inputs = {"logprobs": t(LN(0.25), LN(0.25)), "advantages": t(1.0, 1.0)}
    loss = loss_sum("cispo", lp, inputs, {"clip_high_threshold": 1.5})
    assert loss.item() == pytest.approx(-(1.5 * LN(0.5) + 0.5 * LN(0.125)))
    loss.backward()
    assert lp.grad is not None
    assert lp.grad.tolist() == pytest.approx([-1.5, -0.5])  # d/dlp = -clamp(ratio)·A


def test_dro_penalises_the_squared_logprob_gap() -> None:
    lp, inputs = t(-1.0), {"logprobs": t(-1.5), "advantages": t(2.0)}
    # -(−1·2 − ½·0.1·0.5²) = 2.0125
    assert loss_sum("dro", lp, inputs, {"beta": 0.1}).item() == pytest.approx(2.0125)


def test_distillation_advantage_is_scaled_teacher_minus_student() -> None:
    assert distillation_advantages([-1.0, -2.0], [-1.5, -1.0], 0.5) == [0.25, -0.5]
    with pytest.raises(LossInputError, match="share the tokenizer"):
        distillation_advantages([-1.0], [-1.0, -2.0], 1.0)


def test_sampler_learner_kl_estimators() -> None:
    v1, v2 = sampler_learner_kl([-1.0, -2.0], [-1.5, -1.0])  # q - p = [0.5, -1]
    assert v1 == pytest.approx(-0.25)
    assert v2 == pytest.approx(0.3125)
    assert sampler_learner_kl([], []) == (0.0, 0.0)


def test_missing_inputs_are_named() -> None:
    with pytest.raises(LossInputError, match="advantages"):
        check_inputs("ppo", {"target_tokens": [1], "logprobs": [0.0]})
    with pytest.raises(LossInputError, match="unknown loss_fn 'grpo'"):
        check_inputs("grpo", {})


def test_rl_datum_shifts_targets_and_pads_the_prompt() -> None:
    d = rl_datum([10, 11, 12], [20, 21], [-0.1, -0.2], 0.5)
    assert d.model_input.to_ints() == [10, 11, 12, 20]
    assert d.loss_fn_inputs["target_tokens"].tolist() == [11, 12, 20, 21]
    assert d.loss_fn_inputs["logprobs"].tolist() == pytest.approx([0, 0, -0.1, -0.2])
    assert d.loss_fn_inputs["advantages"].tolist() == [0, 0, 0.5, 0.5]
    span = completion_span(3, 2)
    assert d.loss_fn_inputs["target_tokens"].tolist()[span] == [20, 21]
    per_token = rl_datum([1], [2, 3], [-1.0, -1.0], [0.25, -0.5])
    assert per_token.loss_fn_inputs["advantages"].tolist() == [0.25, -0.5]


def test_sft_datum_weights_only_the_completion() -> None:
    d = sft_datum([5, 6], [7, 8, 9])
    assert d.model_input.to_ints() == [5, 6, 7, 8]
    assert d.loss_fn_inputs["target_tokens"].tolist() == [6, 7, 8, 9]
    assert d.loss_fn_inputs["weights"].tolist() == [0, 1, 1, 1]


def test_bad_datums_fail_with_the_reason() -> None:
    with pytest.raises(LossInputError, match="prompt token"):
        sft_datum([], [1])
    with pytest.raises(LossInputError, match="completion token"):
        sft_datum([1], [])
    with pytest.raises(LossInputError, match="2 sampler logprobs for 1 completion tokens"):
        rl_datum([1], [2], [-1.0, -1.0], 1.0)
    with pytest.raises(LossInputError, match="1 advantages for 2 tokens"):
        rl_datum([1], [2, 3], [-1.0, -1.0], [1.0])


def test_dro_leaves_the_prompt_positions_alone() -> None:
    """A datum pads its prompt with q = 0, A = 0: the squared penalty must not pull the
    learner's prompt logprobs toward 0 (i.e. toward certainty about the prompt)."""
    datum = rl_datum([1, 2, 3, 4], [5, 6], [-0.5, -0.7], 1.0)
    inputs = {
        k: v.to_torch().float() for k, v in datum.loss_fn_inputs.items() if k != "target_tokens"
    }
    lp = torch.tensor([-2.0, -3.0, -1.0, -0.4, -0.9], requires_grad=True)
    loss = loss_sum("dro", lp, inputs, {"beta": 0.1})
    loss.backward()
    assert lp.grad is not None
    assert lp.grad[:3].tolist() == [0.0, 0.0, 0.0]
    # completion: d/dlp −(lp·A − ½β(lp − q)²) = −A + β(lp − q)
    assert lp.grad[3:].tolist() == pytest.approx([-1 + 0.1 * 0.1, -1 + 0.1 * -0.2])
