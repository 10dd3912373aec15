"""The Tinker engine against the real service, once: sample → train on the served turn → save for
the sampler → swap → sample from the trained weights. Skipped without TINKER_API_KEY (there is
no network here); every call has a deadline, so a dead service fails the test instead of
hanging it. The stand-in suite (`test_serving_tinker.py`) covers the same path offline.
"""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import openai
import pytest
from tinker import types

from metaclaw.serving.app import create_app
from metaclaw.serving.tinker_engine import TinkerEngine
from metaclaw.training.datums import sft_datum
from metaclaw.training.tinker_backend import TinkerBackend
from tests.served_app import ServedApp

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("TINKER_API_KEY"), reason="needs TINKER_API_KEY"),
]
MODEL = os.environ.get("METACLAW_TEST_TINKER_MODEL", "Qwen/Qwen3-4B-Instruct-2507")


def test_sample_train_save_swap_once_against_tinker(tmp_path: Path) -> None:
    backend = TinkerBackend(MODEL, lora_rank=8, timeout_s=300)
    try:
        engine = TinkerEngine.connect(
            backend.service, base_model=MODEL, name=MODEL, call_timeout_s=300, sample_timeout_s=120
        )
        app = create_app(engine, home=tmp_path, request_timeout_s=180)
        with ServedApp(app) as server:
            client = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
            body = {
                "model": MODEL,
                "messages": [{"role": "user", "content": "Say hello in three words."}],
                "max_tokens": 16,
                "temperature": 1.0,
                "seed": 1,
            }
            first = client.chat.completions.create(**body)  # type: ignore[call-overload]
            meta = first.model_extra["metaclaw"]
            assert meta["checkpoint"] is None and meta["completion_token_ids"]
            assert len(meta["completion_logprobs"]) == len(meta["completion_token_ids"])
            backend.forward_backward(
                [sft_datum(meta["prompt_token_ids"], meta["completion_token_ids"])],
                "cross_entropy",
            )
            backend.optim_step(types.AdamParams(learning_rate=1e-5))
            path = backend.save_weights_for_sampler("metaclaw-test-served")
            token = (tmp_path / "policy-admin.token").read_text()
            swapped = httpx.post(
                server.url + "/admin/adapter",
                json={"checkpoint_id": "ckpt-real", "path": path},
                headers={"X-MetaClaw-Admin-Token": token},
                timeout=300,
            )
            assert swapped.status_code == 200, swapped.text
            second = client.chat.completions.create(**body)  # type: ignore[call-overload]
            assert second.model_extra["metaclaw"]["checkpoint"] == "ckpt-real"
    finally:
        backend.close()
