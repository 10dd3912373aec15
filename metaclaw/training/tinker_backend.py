"""`TinkerBackend`: the training protocol as a thin pass-through to the `tinker` SDK (0.38).

Why every call goes through `_call` with a deadline: the SDK blocks *inside* some calls before
any future exists (a dead base URL hangs `create_lora_training_client` for 302 s), and sample
calls have been seen to hang for minutes (reference/tinker-api.md §6). Each SDK call therefore
runs on a daemon thread and its result — the client, or the `APIFuture`'s `.result(timeout)` —
is awaited against one deadline; a hang becomes a `TinkerTimeoutError` naming the call and the
setting to raise.

Nothing here touches the network until the first training call: constructing the backend (and
the `ServiceClient`) is free, so CI can import and configure it without a key.

Checkpoints: `save_state` → `tinker://<run>/weights/<name>` (weights + Adam moments; resume goes
through `create_training_client_from_state_with_optimizer`), `save_weights_for_sampler` →
`tinker://<run>/sampler_weights/<name>`, durable (never the ephemeral
`save_weights_and_get_sampling_client`, which has no path to promote or roll back to).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from tinker import types

T = TypeVar("T")


class TinkerTimeoutError(TimeoutError):
    """A Tinker call did not finish in time (the service is slow, queued or unreachable)."""


def call_with_timeout(fn: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Run `fn` on a daemon thread; if it returns an SDK future, wait for its result too.

    The deadline covers both the blocking submit and the wait, so no Tinker call can stall a
    flow run longer than `timeout_s`.
    """
    deadline = time.monotonic() + timeout_s
    box: Future[Any] = Future()

    def target() -> None:
        try:
            box.set_result(fn())
        except BaseException as exc:  # delivered to the caller below
            box.set_exception(exc)

    threading.Thread(target=target, name=f"tinker-{what}", daemon=True).start()
    try:
        value = box.result(timeout=max(0.0, deadline - time.monotonic()))
        if hasattr(value, "result") and callable(value.result):
            value = value.result(timeout=max(0.001, deadline - time.monotonic()))
    except (FutureTimeout, TimeoutError) as exc:
        raise TinkerTimeoutError(
            f"Tinker {what} did not finish within {timeout_s:.0f} s; check TINKER_API_KEY / "
            "training.tinker_base_url, or raise training.tinker_timeout_s"
        ) from exc
    return value


class TinkerBackend:
    """One Tinker LoRA training run (created lazily), plus samplers on its weights."""

    name = "tinker"

    def __init__(
        self,
        base_model: str,
        *,
        lora_rank: int = 32,
        seed: int | None = None,
        timeout_s: float = 600.0,
        ttl_s: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        service_client: Any | None = None,
    ) -> None:
        self.base_model = base_model
        self.lora_rank = lora_rank
        self.seed = seed
        self.timeout_s = timeout_s
        self.ttl_s = ttl_s
        if service_client is None:
            import tinker

            service_client = tinker.ServiceClient(base_url=base_url, api_key=api_key)
        self.service = service_client  # constructing it makes no network call
        self._training: Any | None = None
        self._sampler: Any | None = None

    def _call(self, fn: Callable[[], T], what: str) -> T:
        return call_with_timeout(fn, self.timeout_s, what)

    @property
    def training(self) -> Any:
        if self._training is None:
            self._training = self._call(
                lambda: self.service.create_lora_training_client(
                    base_model=self.base_model,
                    rank=self.lora_rank,
                    seed=self.seed,
                    train_mlp=True,
                    train_attn=True,
                    train_unembed=False,
                ),
                "create_lora_training_client",
            )
        return self._training

    def forward_backward(
        self,
        data: list[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> types.ForwardBackwardOutput:
        tc = self.training
        self._sampler = None
        return self._call(
            lambda: tc.forward_backward(data, loss_fn, loss_fn_config), "forward_backward"
        )

    def forward(
        self,
        data: list[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> types.ForwardBackwardOutput:
        tc = self.training
        return self._call(lambda: tc.forward(data, loss_fn, loss_fn_config), "forward")

    def optim_step(self, adam: types.AdamParams) -> types.OptimStepResponse:
        tc = self.training
        self._sampler = None
        return self._call(lambda: tc.optim_step(adam), "optim_step")

    def sample(
        self, prompt: types.ModelInput, num_samples: int, params: types.SamplingParams
    ) -> types.SampleResponse:
        if self._sampler is None:  # ephemeral snapshot of the current weights: fine to sample
            tc = self.training
            self._sampler = self._call(
                lambda: tc.save_weights_and_get_sampling_client(), "save_weights_and_get_sampler"
            )
        sampler = self._sampler
        return self._call(
            lambda: sampler.sample(prompt=prompt, num_samples=num_samples, sampling_params=params),
            "sample",
        )

    def save_state(self, name: str) -> str:
        tc = self.training
        return self._call(lambda: tc.save_state(name, ttl_seconds=self.ttl_s), "save_state").path

    def load_state(self, path: str) -> None:
        """A new training client from the saved weights *and* optimizer (an exact resume)."""
        self._training = self._call(
            lambda: self.service.create_training_client_from_state_with_optimizer(path),
            "create_training_client_from_state_with_optimizer",
        )
        self._sampler = None

    def save_weights_for_sampler(self, name: str) -> str:
        tc = self.training
        return self._call(
            lambda: tc.save_weights_for_sampler(name, ttl_seconds=None), "save_weights_for_sampler"
        ).path

    def get_tokenizer(self) -> Any:
        tc = self.training
        return self._call(lambda: tc.get_tokenizer(), "get_tokenizer")

    def close(self) -> None:
        close = getattr(self.service, "close", None)
        if close is not None and self._training is not None:
            self._call(lambda: close("success"), "close")
