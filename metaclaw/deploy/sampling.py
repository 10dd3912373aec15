"""Sampling the candidate, the current policy and the base model for the gate.

Choice (documented in docs/deploy.md): evaluation samples through the *training* backends, not
through the running policy server. Swapping the live server's adapter to evaluate a candidate
would serve unvetted weights to users, and a second server process would double the memory of
a small machine. So:

- `BackendSampler` drives any `TrainingBackend` (the local transformers + peft one in practice):
  `load_state(path)` puts a checkpoint's adapter in place, `sample` draws replies, `forward`
  scores tokens (for the KL guard). A fresh backend is the base model (LoRA B = 0), and a LoRA
  cannot be unloaded, so work is ordered candidate → current → base: at most two model loads.
- `TinkerSampler` uses Tinker sampling clients on the persistent sampler paths
  (`create_sampling_client(model_path=…)`, `compute_logprobs`), the base via `base_model=`.

Both policies draw with the same seed for the same prompt (common random numbers): identical
weights give identical replies, so an unchanged candidate ties exactly instead of by luck.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tinker import types

from metaclaw.config import Settings

if TYPE_CHECKING:
    from metaclaw.training.local import LocalBackend

LOGPROB_CHUNK = 8


@dataclass(frozen=True)
class PolicyRef:
    """Weights to sample: a checkpoint (its loadable path) or, with no id, the base model."""

    checkpoint_id: str | None = None
    path: str | None = None

    @property
    def label(self) -> str:
        return self.checkpoint_id or "base"


BASE = PolicyRef()


@dataclass(frozen=True)
class Reply:
    tokens: list[int]
    text: str
    stop_reason: str


def prompt_seed(base_seed: int, prompt_id: str) -> int:
    digest = hashlib.sha256(f"{base_seed}:{prompt_id}".encode()).hexdigest()
    return int(digest[:8], 16)


class Sampler(Protocol):
    def tokenizer(self) -> Any: ...

    def sample(
        self, policy: PolicyRef, prompt: list[int], n: int, params: types.SamplingParams
    ) -> list[Reply]: ...

    def sample_many(
        self, policy: PolicyRef, requests: Sequence[tuple[list[int], int, types.SamplingParams]]
    ) -> list[list[Reply]]: ...

    def logprobs(
        self, policy: PolicyRef, pairs: Sequence[tuple[list[int], list[int]]]
    ) -> list[list[float]]: ...

    def close(self) -> None: ...


def _same(value: Any) -> Any:
    """`value` itself: handed to `_call`, which waits on an SDK future it is given back."""
    return value


def _replies(tokenizer: Any, response: types.SampleResponse) -> list[Reply]:
    return [
        Reply(
            list(s.tokens),
            str(tokenizer.decode(list(s.tokens), skip_special_tokens=True)),
            s.stop_reason,
        )
        for s in response.sequences
    ]


class BackendSampler:
    """Samples and scores through a `TrainingBackend` built by `factory` (a fresh one = base)."""

    def __init__(self, factory: Callable[[], LocalBackend]) -> None:
        self._factory = factory
        self._backend: LocalBackend | None = None
        self._loaded: PolicyRef | None = None
        self._tokenizer: Any | None = None
        self.model_loads = 0

    def _use(self, policy: PolicyRef) -> Any:
        if self._backend is not None and self._loaded == policy:
            return self._backend
        if policy.checkpoint_id is None and self._backend is not None:
            self.close()  # an adapter cannot be unloaded: start again from the base weights
        if self._backend is None:
            self._backend = self._factory()
            self.model_loads += 1
            self._loaded = BASE
        if policy.checkpoint_id is not None:
            if not policy.path:
                raise ValueError(f"checkpoint {policy.checkpoint_id} has no path to load")
            self._loaded = None  # a failed load leaves unknown weights
            self._backend.load_state(policy.path)
        self._loaded = policy
        return self._backend

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            backend = self._backend or self._use(BASE)
            self._tokenizer = backend.get_tokenizer()
        return self._tokenizer

    def sample(
        self, policy: PolicyRef, prompt: list[int], n: int, params: types.SamplingParams
    ) -> list[Reply]:
        return self.sample_many(policy, [(prompt, n, params)])[0]

    def sample_many(
        self, policy: PolicyRef, requests: Sequence[tuple[list[int], int, types.SamplingParams]]
    ) -> list[list[Reply]]:
        """The whole chunk decoded as one batch; each prompt keeps its own seeded generator
        (common random numbers need it)."""
        backend = self._use(policy)
        out = backend.sample_batch(
            [(types.ModelInput.from_ints(prompt), n, params) for prompt, n, params in requests]
        )
        tok = self.tokenizer()
        return [_replies(tok, response) for response in out]

    def logprobs(
        self, policy: PolicyRef, pairs: Sequence[tuple[list[int], list[int]]]
    ) -> list[list[float]]:
        from metaclaw.training.backend import learner_logprobs
        from metaclaw.training.datums import completion_span, sft_datum

        backend = self._use(policy)
        result: list[list[float]] = [[] for _ in pairs]
        todo = [i for i, (_, c) in enumerate(pairs) if c]
        for start in range(0, len(todo), LOGPROB_CHUNK):
            chunk = todo[start : start + LOGPROB_CHUNK]
            out = backend.forward([sft_datum(*pairs[i]) for i in chunk], "cross_entropy")
            for i, lps in zip(chunk, learner_logprobs(out), strict=True):
                prompt, completion = pairs[i]
                result[i] = [float(v) for v in lps[completion_span(len(prompt), len(completion))]]
        return result

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
        self._backend = None
        self._loaded = None


class TinkerSampler:
    """Tinker sampling clients on persistent sampler paths (and the base model)."""

    def __init__(self, service_client: Any, base_model: str, timeout_s: float = 600.0) -> None:
        self.service = service_client
        self.base_model = base_model
        self.timeout_s = timeout_s
        self._clients: dict[PolicyRef, Any] = {}
        self._tokenizer: Any | None = None

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        from metaclaw.training.tinker_backend import call_with_timeout

        return call_with_timeout(fn, self.timeout_s, what)

    def _client(self, policy: PolicyRef) -> Any:
        if policy not in self._clients:
            if policy.checkpoint_id is None:
                kw = {"base_model": self.base_model}
            else:
                from metaclaw.deploy.durable import check_tinker_path

                kw = {"model_path": check_tinker_path(policy.path or "")}
            self._clients[policy] = self._call(
                lambda: self.service.create_sampling_client(**kw), "create_sampling_client"
            )
        return self._clients[policy]

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            client = self._client(BASE)
            self._tokenizer = self._call(client.get_tokenizer, "get_tokenizer")
        return self._tokenizer

    def sample(
        self, policy: PolicyRef, prompt: list[int], n: int, params: types.SamplingParams
    ) -> list[Reply]:
        client = self._client(policy)
        out = self._call(
            lambda: client.sample(
                prompt=types.ModelInput.from_ints(prompt), num_samples=n, sampling_params=params
            ),
            "sample",
        )
        return _replies(self.tokenizer(), out)

    def sample_many(
        self, policy: PolicyRef, requests: Sequence[tuple[list[int], int, types.SamplingParams]]
    ) -> list[list[Reply]]:
        """Every request submitted at once (the SDK returns futures), then collected: one
        round trip of latency for the whole eval set instead of one per prompt."""
        client = self._client(policy)
        futures = self._call(
            lambda: [
                client.sample(
                    prompt=types.ModelInput.from_ints(prompt), num_samples=n, sampling_params=params
                )
                for prompt, n, params in requests
            ],
            "sample",
        )
        tok = self.tokenizer()
        out = []
        for future in futures:
            done = self._call(functools.partial(_same, future), "sample")  # waits for it
            out.append(_replies(tok, done))
        return out

    def logprobs(
        self, policy: PolicyRef, pairs: Sequence[tuple[list[int], list[int]]]
    ) -> list[list[float]]:
        client = self._client(policy)
        result: list[list[float]] = []
        for prompt, completion in pairs:
            if not completion:
                result.append([])
                continue
            full = types.ModelInput.from_ints([*prompt, *completion])
            lps = self._call(functools.partial(client.compute_logprobs, full), "compute_logprobs")
            result.append([float("nan") if v is None else float(v) for v in lps[len(prompt) :]])
        return result

    def close(self) -> None:
        self._clients.clear()


def make_sampler(settings: Settings) -> Sampler:
    """The sampler for the configured training backend."""
    cfg = settings.training
    if cfg.backend == "tinker":
        import os

        import tinker

        key = cfg.tinker_api_key.get_secret_value() if cfg.tinker_api_key else None
        if not (key or os.environ.get("TINKER_API_KEY")):
            raise ValueError(
                "training.backend=tinker needs TINKER_API_KEY to evaluate "
                "candidates (or METACLAW_TRAINING__TINKER_API_KEY)"
            )
        service = tinker.ServiceClient(base_url=cfg.tinker_base_url, api_key=key)
        return TinkerSampler(service, cfg.base_model, cfg.tinker_timeout_s)
    from metaclaw.training.factory import make_local_backend

    return BackendSampler(lambda: make_local_backend(settings))
