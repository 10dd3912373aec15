"""An in-process training backend with no transformers: a bigram "model" under the same protocol,
and the Tinker service's sampling surface on the same bigram weights (`FakeTinkerService`).

It stands in for the hosted trainer (Tinker) in tests. It is a real, independent implementation
of the protocol's semantics — shifted targets, summed losses, gradient accumulation until
`optim_step`, AdamW with the step's parameters, tempered sampling with logprobs, exact
save/load — over a tiny model: the next-token logits are one learned row per previous token.
The contract tests run it next to `LocalBackend`; the flow tests use it where they want to
inspect exactly which datums reached which loss (`calls`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tinker import types

from metaclaw.training.losses import check_inputs, loss_sum


@dataclass
class Call:
    method: str
    loss_fn: str | None = None
    data: list[types.Datum] = field(default_factory=list)


class BigramBackend:
    """`logits(next | prev) = table[prev]`; every row is trainable (no LoRA needed)."""

    name = "fake"

    def __init__(
        self,
        vocab_size: int = 64,
        *,
        checkpoint_dir: Path,
        seed: int = 0,
        eos_token_id: int = 1,
        base_model: str = "bigram",
        tokenizer: Any = None,
    ) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(torch.randn(vocab_size, vocab_size, generator=gen))
        self.optimizer = torch.optim.AdamW(
            [self.table], lr=1e-4, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0, foreach=False
        )
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.checkpoint_dir = Path(checkpoint_dir)
        self.base_model = base_model
        self.tokenizer = tokenizer
        self.step = 0
        self.calls: list[Call] = []

    def _logprobs(self, datum: types.Datum) -> torch.Tensor:
        ids = torch.tensor(datum.model_input.to_ints(), dtype=torch.long)
        targets = datum.loss_fn_inputs["target_tokens"].to_torch().long()
        if targets.shape[0] != ids.shape[0]:
            raise ValueError("target_tokens must have one entry per model_input token")
        logp = torch.log_softmax(self.table[ids], dim=-1)
        if targets.dim() == 1:
            return logp.gather(-1, targets[:, None]).squeeze(-1)
        return logp.gather(-1, targets)

    def _run(
        self,
        data: list[types.Datum],
        loss_fn: str,
        config: Mapping[str, float | str] | None,
        backward: bool,
    ) -> types.ForwardBackwardOutput:
        if not data:
            raise ValueError("forward_backward needs at least one datum")
        outputs, total = [], 0.0
        for d in data:
            check_inputs(loss_fn, d.loss_fn_inputs)
            with torch.set_grad_enabled(backward):
                lp = self._logprobs(d)
                inputs = {
                    k: v.to_torch().float()
                    for k, v in d.loss_fn_inputs.items()
                    if k != "target_tokens"
                }
                loss = loss_sum(loss_fn, lp, inputs, config)
                if backward:
                    loss.backward()
            total += float(loss.detach())
            outputs.append({"logprobs": types.TensorData.from_torch(lp.detach())})
        return types.ForwardBackwardOutput(
            loss_fn_output_type="logprobs", loss_fn_outputs=outputs, metrics={"loss:sum": total}
        )

    def forward_backward(
        self,
        data: list[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> types.ForwardBackwardOutput:
        self.calls.append(Call("forward_backward", loss_fn, list(data)))
        return self._run(data, loss_fn, loss_fn_config, backward=True)

    def forward(
        self,
        data: list[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> types.ForwardBackwardOutput:
        self.calls.append(Call("forward", loss_fn, list(data)))
        return self._run(data, loss_fn, loss_fn_config, backward=False)

    def optim_step(self, adam: types.AdamParams) -> types.OptimStepResponse:
        self.calls.append(Call("optim_step"))
        for group in self.optimizer.param_groups:
            group.update(
                lr=adam.learning_rate,
                betas=(adam.beta1, adam.beta2),
                eps=adam.eps,
                weight_decay=adam.weight_decay,
            )
        if adam.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_([self.table], adam.grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return types.OptimStepResponse(metrics={})

    @torch.no_grad()
    def sample(
        self, prompt: types.ModelInput, num_samples: int, params: types.SamplingParams
    ) -> types.SampleResponse:
        gen = torch.Generator()
        gen.manual_seed(params.seed if params.seed is not None else 0)
        stops = (
            {self.eos_token_id}
            if params.stop is None
            else {s for s in params.stop if isinstance(s, int)}
        )  # type: ignore[union-attr]
        sequences = []
        for n in range(num_samples):
            prev, tokens, lps, reason = prompt.to_ints()[-1], [], [], "length"
            for _ in range(params.max_tokens or 32):
                logp = torch.log_softmax(self.table[prev] / max(params.temperature, 1e-6), -1)
                tok = int(torch.multinomial(logp.exp(), 1, generator=gen))
                tokens.append(tok)
                lps.append(float(logp[tok]))
                prev = tok
                if tok in stops:
                    reason = "stop"
                    break
            sequences.append(
                types.SampledSequence(
                    stop_reason=reason,
                    sequence_id=f"fake-{n}",  # type: ignore[arg-type]
                    _tokens_list=tokens,
                    _logprobs_list=lps,
                )
            )
        return types.SampleResponse(sequences=sequences)

    def save_state(self, name: str) -> str:
        from safetensors.torch import save_file

        directory = self.checkpoint_dir / name
        directory.mkdir(parents=True, exist_ok=True)
        save_file({"table": self.table.detach().clone()}, directory / "table.safetensors")
        torch.save(self.optimizer.state_dict(), directory / "optimizer.pt")
        (directory / "trainer_state.json").write_text(json.dumps({"step": self.step}))
        return str(directory)

    def save_weights_for_sampler(self, name: str) -> str:
        return self.save_state(name)

    def load_state(self, path: str) -> None:
        from safetensors.torch import load_file

        directory = Path(path)
        with torch.no_grad():
            self.table.copy_(load_file(directory / "table.safetensors")["table"])
        self.optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
        self.optimizer.zero_grad(set_to_none=True)
        self.step = json.loads((directory / "trainer_state.json").read_text())["step"]

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def close(self) -> None:
        pass


# ----- the Tinker service's sampling surface, for the policy server's Tinker engine ----------


class Done:
    """An SDK future that has already resolved (`APIFuture.result(timeout)`)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, timeout: float | None = None) -> Any:
        return self.value


class FakeSamplingClient:
    """`tinker.SamplingClient`'s surface the Tinker engine calls: `sample` (a future of a real
    `types.SampleResponse`), `get_tokenizer`, and the SDK's `on_queue_state_change` hook.

    Tokens and logprobs are real: drawn by `BigramBackend.sample` from this client's weights. A
    `reply` set on the service for this client's path is produced instead (its tokens, then the
    end of turn), with the logprobs the same weights give those tokens at the request's
    temperature, as a sampler would report them.
    """

    def __init__(self, service: FakeTinkerService, weights: BigramBackend, label: str) -> None:
        self.service, self.weights, self.label = service, weights, label
        self.queue_states: list[tuple[Any, str | None]] = []

    def sample(
        self,
        prompt: types.ModelInput,
        num_samples: int,
        sampling_params: types.SamplingParams,
        **_: Any,
    ) -> Done:
        service = self.service
        service.sample_calls.append((self.label, prompt.to_ints(), sampling_params))
        if service.queue_state is not None:
            self.on_queue_state_change(*service.queue_state)
        if service.hold is not None and not service.hold.wait(service.hold_limit_s):
            raise TimeoutError("the stand-in was held past its limit")
        if service.fail_with is not None:
            raise service.fail_with
        reply = service.replies.get(self.label)
        if reply is None:
            return Done(self.weights.sample(prompt, num_samples, sampling_params))
        tokens = [*service.tokenizer(reply, add_special_tokens=False)["input_ids"]]
        tokens.append(service.tokenizer.eos_token_id)
        previous = [prompt.to_ints()[-1], *tokens[:-1]]
        scale = max(sampling_params.temperature, 1e-6)
        with torch.no_grad():
            logp = torch.log_softmax(self.weights.table[previous] / scale, dim=-1)
        lps = [float(logp[i, t]) for i, t in enumerate(tokens)]
        seq = types.SampledSequence(
            stop_reason="stop", sequence_id="scripted", _tokens_list=tokens, _logprobs_list=lps
        )
        return Done(types.SampleResponse(sequences=[seq] * num_samples))

    def get_tokenizer(self) -> Any:
        return self.service.tokenizer

    def on_queue_state_change(self, queue_state: Any, queue_state_reason: str | None) -> None:
        self.queue_states.append((queue_state, queue_state_reason))


class FakeTinkerService:
    """`tinker.ServiceClient`'s sampling surface: `create_sampling_client(model_path=… |
    base_model=…)`, on the base weights or on sampler checkpoints saved with
    `save_weights_for_sampler(backend, name)` (a persistent `tinker://…/sampler_weights/…` path).

    Faults, as the service shows them: `fail_with` (every call raises it), `hold` (sample calls
    wait on the event: a slow or hung service, or a test holding requests in flight),
    `queue_state` (reported to the client on every sample call, as the SDK's poller does).
    """

    RUN = "tinker://fake-run:train:0"

    def __init__(self, tokenizer: Any, *, base_model: str = "fake/base", seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.base_model = base_model
        self.base = self.new_weights(seed)
        self.checkpoints: dict[str, BigramBackend] = {}
        self.replies: dict[str, str] = {}
        self.created: list[dict[str, str | None]] = []
        self.sample_calls: list[tuple[str, list[int], types.SamplingParams]] = []
        self.fail_with: Exception | None = None
        self.hold: Any = None  # a threading.Event while held
        self.hold_limit_s = 60.0
        self.queue_state: tuple[Any, str | None] | None = None

    def new_weights(self, seed: int) -> BigramBackend:
        return BigramBackend(
            len(self.tokenizer),
            checkpoint_dir=Path("unused"),
            seed=seed,
            eos_token_id=self.tokenizer.eos_token_id,
            tokenizer=self.tokenizer,
        )

    def save_weights_for_sampler(self, weights: BigramBackend, name: str) -> str:
        path = f"{self.RUN}/sampler_weights/{name}"
        snapshot = self.new_weights(0)
        with torch.no_grad():
            snapshot.table.copy_(weights.table)
        self.checkpoints[path] = snapshot
        return path

    def create_sampling_client(
        self, model_path: str | None = None, base_model: str | None = None, **_: Any
    ) -> Done:
        self.created.append({"model_path": model_path, "base_model": base_model})
        if self.fail_with is not None:
            raise self.fail_with
        if model_path is not None:
            if model_path not in self.checkpoints:
                raise ValueError(f"no sampler checkpoint at {model_path}")
            return Done(FakeSamplingClient(self, self.checkpoints[model_path], model_path))
        if base_model != self.base_model:
            raise ValueError(f"unknown base model {base_model!r}")
        return Done(FakeSamplingClient(self, self.base, "base"))
