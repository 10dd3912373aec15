"""TinkerBackend: deadlines on every call, configuration errors, and (with a key) the real service.

CI never constructs a client against the real service: a dead URL blocks the SDK for 302 s. The
deadline helper is tested on its own; the real round trip runs only when TINKER_API_KEY is set.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import pytest
from tinker import types

from metaclaw.config import Settings
from metaclaw.training.datums import completion_span, sft_datum
from metaclaw.training.factory import TrainingConfigError, make_backend, resolve_base_model_dir
from metaclaw.training.tinker_backend import TinkerTimeoutError, call_with_timeout


def test_a_call_that_blocks_is_cut_off_at_the_deadline() -> None:
    release = threading.Event()
    started = time.monotonic()
    with pytest.raises(TinkerTimeoutError, match="tinker_timeout_s"):
        call_with_timeout(lambda: release.wait(30), 0.3, "create_lora_training_client")
    assert time.monotonic() - started < 2
    release.set()


def test_a_future_that_never_resolves_is_cut_off_too() -> None:
    pending: Future[int] = Future()
    with pytest.raises(TinkerTimeoutError, match="forward_backward"):
        call_with_timeout(lambda: pending, 0.3, "forward_backward")


def test_results_and_errors_pass_through() -> None:
    done: Future[int] = Future()
    done.set_result(7)
    assert call_with_timeout(lambda: done, 5, "x") == 7
    assert call_with_timeout(lambda: "plain", 5, "x") == "plain"
    with pytest.raises(ZeroDivisionError):
        call_with_timeout(lambda: 1 / 0, 5, "x")


def test_tinker_without_a_key_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TINKER_API_KEY", raising=False)
    settings = Settings(home=tmp_path, training={"backend": "tinker"})
    with pytest.raises(TrainingConfigError, match="TINKER_API_KEY"):
        make_backend(settings)


def test_local_base_model_must_be_a_model_directory(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, training={"base_model": str(tmp_path)})
    assert resolve_base_model_dir(settings) == tmp_path
    from metaclaw.training.local import LocalBackend

    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        LocalBackend(tmp_path, checkpoint_dir=tmp_path / "c")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("TINKER_API_KEY"), reason="needs TINKER_API_KEY")
def test_real_tinker_round_trip() -> None:
    from metaclaw.training.tinker_backend import TinkerBackend

    model = os.environ.get("METACLAW_TEST_TINKER_MODEL", "Qwen/Qwen3-4B-Instruct-2507")
    backend = TinkerBackend(model, lora_rank=8, timeout_s=300)
    try:
        datum = sft_datum([100, 200, 300], [400, 500])
        out = backend.forward_backward([datum], "cross_entropy")
        lps = out.loss_fn_outputs[0]["logprobs"].tolist()
        assert len(lps) == 4
        assert out.metrics["loss:sum"] == pytest.approx(-sum(lps[completion_span(3, 2)]), rel=1e-3)
        backend.optim_step(types.AdamParams(learning_rate=1e-5))
        state = backend.save_state("metaclaw-test-state")
        sampler = backend.save_weights_for_sampler("metaclaw-test-sampler")
        assert state.startswith("tinker://") and sampler.startswith("tinker://")
        res = backend.sample(
            types.ModelInput.from_ints([100, 200, 300]),
            1,
            types.SamplingParams(max_tokens=4, seed=1),
        )
        seq = res.sequences[0]
        assert len(seq.logprobs) == len(seq.tokens) >= 1
        saved = backend.forward([datum], "cross_entropy").loss_fn_outputs[0]["logprobs"]
        backend.forward_backward([datum], "cross_entropy")
        backend.optim_step(types.AdamParams(learning_rate=1e-3))  # move away from the state
        backend.load_state(state)
        again = backend.forward([datum], "cross_entropy").loss_fn_outputs[0]["logprobs"]
        assert again.tolist() == pytest.approx(saved.tolist(), abs=1e-3)
    finally:
        backend.close()
