"""Build `tinker.types.Datum`s from token sequences (pure; the alignment lives here only).

Tinker's alignment contract: position i of `model_input` predicts token i+1, so for a sequence
`full = prompt + completion` the datum has `model_input = full[:-1]`, `target_tokens = full[1:]`,
and every `loss_fn_inputs` tensor has that length N = len(full) - 1. The completion's k-th token
is therefore target position `len(prompt) - 1 + k`.

Prompt positions carry weight 0 / advantage 0 / sampler logprob 0 so they add no gradient, as in
the cookbook; no extra `mask` key is sent (Tinker rejects unknown keys) — callers keep the
completion span from `completion_span` instead. The inputs are plain lists: `Datum` converts them
to its `TensorData` (int64 tokens, float32 values) on construction, though its annotation names
only the converted type, hence the `dict[str, Any]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tinker import types

from metaclaw.training.losses import LossInputError


def completion_span(prompt_len: int, completion_len: int) -> slice:
    """Target positions holding the completion's tokens."""
    return slice(prompt_len - 1, prompt_len - 1 + completion_len)


def _check(prompt: Sequence[int], completion: Sequence[int]) -> None:
    if len(prompt) < 1:
        raise LossInputError("a datum needs a prompt token (the first token is never a target)")
    if len(completion) < 1:
        raise LossInputError("a datum needs at least one completion token")


def sft_datum(prompt: Sequence[int], completion: Sequence[int], weight: float = 1.0) -> types.Datum:
    """Cross-entropy on the completion only (SFT on a good turn / off-policy distillation)."""
    _check(prompt, completion)
    full = [*prompt, *completion]
    weights = [0.0] * (len(prompt) - 1) + [float(weight)] * len(completion)
    inputs: dict[str, Any] = {"target_tokens": full[1:], "weights": weights}
    return types.Datum(model_input=types.ModelInput.from_ints(full[:-1]), loss_fn_inputs=inputs)


def rl_datum(
    prompt: Sequence[int],
    completion: Sequence[int],
    sampler_logprobs: Sequence[float],
    advantages: float | Sequence[float],
) -> types.Datum:
    """Importance-sampling/PPO/CISPO datum: sampler logprobs and advantages on the completion.

    `advantages` is one scalar broadcast over the completion (GRPO) or one value per token
    (distillation).
    """
    _check(prompt, completion)
    if len(sampler_logprobs) != len(completion):
        raise LossInputError(
            f"{len(sampler_logprobs)} sampler logprobs for {len(completion)} completion tokens"
        )
    if isinstance(advantages, int | float):
        per_token = [float(advantages)] * len(completion)
    else:
        per_token = [float(a) for a in advantages]
        if len(per_token) != len(completion):
            raise LossInputError(f"{len(per_token)} advantages for {len(completion)} tokens")
    pad = [0.0] * (len(prompt) - 1)
    full = [*prompt, *completion]
    inputs: dict[str, Any] = {
        "target_tokens": full[1:],
        "logprobs": pad + [float(x) for x in sampler_logprobs],
        "advantages": pad + per_token,
    }
    return types.Datum(model_input=types.ModelInput.from_ints(full[:-1]), loss_fn_inputs=inputs)


def datum_length(datum: types.Datum) -> int:
    return datum.model_input.length
