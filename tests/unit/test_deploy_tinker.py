"""Tinker checkpoints at the gate: only persistent sampler paths, TTL pinned before evaluation,
sampling and scoring through sampling clients (an in-process fake of the SDK's interface)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tinker import types

from metaclaw.config import Settings
from metaclaw.deploy.durable import (
    NotServableError,
    check_servable,
    check_tinker_path,
    pin_tinker_checkpoint,
)
from metaclaw.deploy.notify import notify_policy_server
from metaclaw.deploy.sampling import BASE, PolicyRef, TinkerSampler
from tests.stubs.training_fake import Done as Future
from tests.tiny_model import build_tokenizer

SAMPLER = "tinker://run-1:train:0/sampler_weights/ckpt-000003"


class FakeSamplingClient:
    """`SamplingClient.sample` / `compute_logprobs` / `get_tokenizer` with fixed answers."""

    def __init__(self, label: str, tokenizer: Any) -> None:
        self.label, self.tokenizer = label, tokenizer

    def sample(
        self, prompt: types.ModelInput, num_samples: int, sampling_params: types.SamplingParams
    ) -> Future:
        tokens = self.tokenizer(
            "Paris" if self.label != "base" else "blue", add_special_tokens=False
        )["input_ids"]
        seq = types.SampledSequence(
            stop_reason="stop",
            sequence_id="s",
            _tokens_list=tokens,
            _logprobs_list=[-0.5] * len(tokens),
        )
        return Future(types.SampleResponse(sequences=[seq] * num_samples))

    def compute_logprobs(self, prompt: types.ModelInput) -> Future:
        n = prompt.length
        value = -0.1 if self.label != "base" else -2.0
        return Future([None] + [value] * (n - 1))

    def get_tokenizer(self) -> Any:
        return self.tokenizer


class FakeService:
    def __init__(self) -> None:
        self.tokenizer = build_tokenizer()
        self.created: list[dict[str, Any]] = []

    def create_sampling_client(
        self, model_path: str | None = None, base_model: str | None = None
    ) -> Future:
        self.created.append({"model_path": model_path, "base_model": base_model})
        return Future(FakeSamplingClient(model_path or "base", self.tokenizer))


class FakeRest:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []

    def set_checkpoint_ttl_from_tinker_path(self, path: str, ttl_seconds: int | None) -> Future:
        self.calls.append((path, ttl_seconds))
        return Future(None)


def test_only_persistent_sampler_paths_are_servable(tmp_path: Path) -> None:
    assert check_tinker_path(SAMPLER) == SAMPLER
    assert check_servable(SAMPLER, tmp_path) == SAMPLER
    with pytest.raises(NotServableError, match="training checkpoint; promote the sampler"):
        check_tinker_path("tinker://run-1:train:0/weights/ckpt-000003")
    with pytest.raises(NotServableError, match="ephemeral samplers have no path"):
        check_tinker_path("tinker://ephemeral")
    with pytest.raises(NotServableError, match="records no path"):
        check_servable(None, tmp_path, "ckpt-x")
    with pytest.raises(NotServableError, match="not a LoRA checkpoint directory"):
        check_servable(str(tmp_path / "gone"), tmp_path)


def test_the_ttl_is_cleared_before_evaluation() -> None:
    rest = FakeRest()
    pin_tinker_checkpoint(SAMPLER, rest, timeout_s=5)
    assert rest.calls == [(SAMPLER, None)]


def test_tinker_sampler_samples_and_scores_through_sampling_clients() -> None:
    service = FakeService()
    sampler = TinkerSampler(service, "Qwen/Qwen3-8B", timeout_s=5)
    cand = PolicyRef("ckpt-3", SAMPLER)
    prompt = [5, 6, 7]
    (reply,) = sampler.sample(cand, prompt, 1, types.SamplingParams(max_tokens=4, seed=1))
    assert reply.text == "Paris" and reply.stop_reason == "stop"
    # the eval set in one batch: every request submitted, then every future collected
    batch = sampler.sample_many(
        cand,
        [
            (prompt, 1, types.SamplingParams(max_tokens=4, seed=1)),
            ([8, 9], 2, types.SamplingParams(max_tokens=4, seed=2)),
        ],
    )
    assert [[r.text for r in replies] for replies in batch] == [["Paris"], ["Paris", "Paris"]]
    (lps,) = sampler.logprobs(cand, [(prompt, reply.tokens)])
    assert lps == [-0.1] * len(reply.tokens)  # the completion's logprobs only
    (base_lps,) = sampler.logprobs(BASE, [(prompt, reply.tokens)])
    assert base_lps == [-2.0] * len(reply.tokens)
    assert {"model_path": SAMPLER, "base_model": None} in service.created
    assert {"model_path": None, "base_model": "Qwen/Qwen3-8B"} in service.created
    with pytest.raises(NotServableError):
        sampler.sample(
            PolicyRef("bad", "tinker://run-1:train:0/weights/x"),
            prompt,
            1,
            types.SamplingParams(max_tokens=4),
        )


def test_the_local_policy_server_is_not_asked_to_serve_a_tinker_checkpoint() -> None:
    notice = notify_policy_server(Settings(), "ckpt-3", SAMPLER)
    assert notice.status == "skipped" and "Tinker" in notice.detail
