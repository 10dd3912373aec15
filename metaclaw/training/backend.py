"""The one narrow interface every training backend implements (Tinker, local, test fakes).

Why a protocol of our own instead of the Tinker client: the same train flow must run against
Tinker Cloud, against transformers + peft on this machine, and against an in-process fake in
tests, with identical semantics. The data model stays Tinker's (`tinker.types`: Datum,
ModelInput, TensorData, AdamParams, SamplingParams, ForwardBackwardOutput, SampleResponse),
which is pure Python and offline-safe, so nothing is translated twice.

Semantics every implementation must match (reference/tinker-api.md §10):
- datum alignment: `model_input = full[:-1]`, `target_tokens = full[1:]`, every tensor length N;
- losses from `metaclaw.training.losses`, **summed** over tokens and datums; the summed loss is
  reported as `metrics["loss:sum"]` and the learner logprobs of the targets as
  `loss_fn_outputs[i]["logprobs"]`;
- gradients accumulate across `forward_backward` calls until `optim_step`; `forward` never
  touches them;
- `optim_step` is AdamW with the learning rate, betas, eps, weight decay and grad clipping of
  the `AdamParams` given on that step;
- `sample` returns one logprob per sampled token, at the sampling temperature, and
  `stop_reason` "stop" or "length";
- `save_state` captures weights + optimizer (an exact resume); `load_state` restores them and
  discards any accumulated gradients; `save_weights_for_sampler` returns a *durable* path;
- calls on one backend run in call order (all implementations here are synchronous).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from tinker import types


@runtime_checkable
class TrainingBackend(Protocol):
    """A LoRA training run plus a sampler on its current weights."""

    name: str
    base_model: str

    def forward_backward(
        self,
        data: list[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> types.ForwardBackwardOutput: ...

    def forward(
        self,
        data: list[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> types.ForwardBackwardOutput: ...

    def optim_step(self, adam: types.AdamParams) -> types.OptimStepResponse: ...

    def sample(
        self, prompt: types.ModelInput, num_samples: int, params: types.SamplingParams
    ) -> types.SampleResponse: ...

    def save_state(self, name: str) -> str:
        """Weights + optimizer state under `name`; returns the path `load_state` accepts."""
        ...

    def load_state(self, path: str) -> None: ...

    def save_weights_for_sampler(self, name: str) -> str:
        """Weights a policy server can load; returns a durable path (local dir or tinker://)."""
        ...

    def get_tokenizer(self) -> Any: ...

    def close(self) -> None: ...


def loss_of(output: types.ForwardBackwardOutput) -> float:
    """The summed loss of a forward/backward output (Tinker reports no `.loss` attribute)."""
    return float(output.metrics["loss:sum"])


def learner_logprobs(output: types.ForwardBackwardOutput) -> list[list[float]]:
    """Per-datum learner logprobs of the target tokens, as plain lists."""
    return [out["logprobs"].to_numpy().astype(float).tolist() for out in output.loss_fn_outputs]
