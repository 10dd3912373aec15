"""The policy server's Tinker engine over real HTTP, through the official `openai` client.

The Tinker service is the only thing replaced, at its network boundary, by the in-process
stand-in of `tests/stubs/training_fake.py` (`FakeTinkerService`: the SDK's sampling surface
returning real `tinker.types`, with real tokens and logprobs from bigram weights). Everything
else is the real server: `build_engine` from `Settings`, the app on a uvicorn socket, the deploy
flow's promotion and rollback calling `POST /admin/adapter`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tinker import types
from tinker.lib.api_future_impl import QueueState

from metaclaw.deploy import deployer
from metaclaw.serving.health import policy_status_line
from metaclaw.serving.server import build_engine
from metaclaw.training.backend import learner_logprobs
from metaclaw.training.datums import completion_span, sft_datum
from tests.deploy_helpers import add_candidates, candidate_row
from tests.helpers import free_port
from tests.stubs.training_fake import FakeTinkerService
from tests.tinker_helpers import (
    MESSAGES,
    TOOLS,
    Tinkered,
    bigram_logprobs,
    tinker_server,
    tinker_settings,
    trace,
)
from tests.tiny_model import build_tokenizer

SAMPLE_TIMEOUT_S = 5.0  # short for the hang test, long enough for a loaded machine


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Tinkered]:
    with tinker_server(tmp_path / "home", tinker_sample_timeout_s=SAMPLE_TIMEOUT_S) as server:
        yield server


def test_chat_is_sampled_by_tinker_with_the_local_engines_trace(served: Tinkered) -> None:
    resp = served.chat(temperature=1.0)
    meta = trace(resp)
    tok = served.service.tokenizer
    rendered = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    prompt = tok(rendered, add_special_tokens=False)["input_ids"]
    assert meta["prompt_token_ids"] == prompt
    (label, sent, params), *_ = served.service.sample_calls
    assert (label, sent) == ("base", prompt)  # Tinker saw exactly the recorded prompt
    assert sorted(params.stop) == sorted(
        [tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")]
    )
    assert (params.max_tokens, params.seed, params.temperature) == (12, 7, 1.0)
    completion = meta["completion_token_ids"]
    assert 1 <= len(completion) <= 12 and resp.usage.completion_tokens == len(completion)
    assert meta["completion_logprobs"] == pytest.approx(
        bigram_logprobs(served.service.base, prompt, completion, 1.0), abs=1e-5
    )
    assert meta["checkpoint"] is None and meta["temperature"] == 1.0 and meta["top_p"] == 1.0
    ended = completion[-1] in served.engine.eos_ids
    assert resp.choices[0].finish_reason == ("stop" if ended else "length")
    text = tok.decode(completion, skip_special_tokens=True)
    assert resp.choices[0].message.content == text
    # on-policy by construction: the trainer's forward pass of the same weights on the served
    # tokens gives the logprobs the server recorded (T = 1)
    out = served.service.base.forward([sft_datum(prompt, completion)], "cross_entropy")
    learner = learner_logprobs(out)[0][completion_span(len(prompt), len(completion))]
    assert learner == pytest.approx(meta["completion_logprobs"], abs=1e-5)


def test_a_streamed_reply_is_the_unstreamed_one_delta_by_delta(served: Tinkered) -> None:
    whole = served.chat(temperature=0.7)
    chunks = list(served.chat(temperature=0.7, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2
    final = [c for c in chunks if c.model_extra and "metaclaw" in c.model_extra]
    assert len(final) == 1 and trace(final[0]) == trace(whole)
    assert final[0].choices[0].finish_reason == whole.choices[0].finish_reason


def test_a_stop_string_ends_the_reply_at_the_token_that_completed_it(served: Tinkered) -> None:
    served.service.replies["base"] = "The sky is blue and the grass is green."
    resp = served.chat(stop=["blue"], max_tokens=40)
    tok = served.service.tokenizer
    meta = trace(resp)
    assert resp.choices[0].message.content == "The sky is "
    assert resp.choices[0].finish_reason == "stop"
    kept = tok.decode(meta["completion_token_ids"])
    assert "blue" in kept and "green" not in kept  # tokens after the stop are not recorded
    assert served.service.sample_calls[-1][2].stop == ["blue"]


def test_tool_calls_come_back_as_openai_tool_calls(served: Tinkered) -> None:
    call = '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>'
    served.service.replies["base"] = call
    for stream in (False, True):
        if stream:
            chunks = list(served.chat(tools=TOOLS, max_tokens=80, stream=True))
            calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
            finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        else:
            resp = served.chat(tools=TOOLS, max_tokens=80)
            calls = list(resp.choices[0].message.tool_calls or [])
            finish, content = resp.choices[0].finish_reason, resp.choices[0].message.content or ""
        assert [(c.function.name, c.function.arguments) for c in calls] == [
            ("read_file", '{"path": "a.py"}')
        ]
        assert finish == "tool_calls" and content == ""
    # the tools were described to the model in the prompt it was sent
    prompt_text = served.service.tokenizer.decode(served.service.sample_calls[-1][1])
    assert '"name": "read_file"' in prompt_text and "<tool_call>" in prompt_text


def test_what_a_sampler_cannot_do_is_a_400_naming_the_parameter(served: Tinkered) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        served.chat(response_format={"type": "json_object"})
    assert err.value.body["code"] == "unsupported_parameter"
    assert err.value.body["param"] == "response_format"
    assert served.service.sample_calls == []


def _train_and_save(service: FakeTinkerService, prompt: list[int], reply: list[int]) -> str:
    """One SFT step of a copy of the base weights toward `reply`, saved for sampling."""
    learner = service.new_weights(0)
    learner.forward_backward([sft_datum(prompt, reply)], "cross_entropy")
    learner.optim_step(types.AdamParams(learning_rate=0.5))
    return service.save_weights_for_sampler(learner, "ckpt-000001")


def test_promotion_swaps_the_sampler_mid_run_and_rollback_swaps_back(served: Tinkered) -> None:
    service = served.service
    first = trace(served.chat())
    path = _train_and_save(service, first["prompt_token_ids"], first["completion_token_ids"])
    row = {**candidate_row("ckpt-1", path, 1), "backend": "tinker"}
    add_candidates(served.settings.paths, row)

    service.hold = threading.Event()
    with ThreadPoolExecutor(6) as pool:
        before = [pool.submit(served.chat) for _ in range(4)]
        _wait_for(lambda: len(service.sample_calls) == 5)  # 4 in flight on the base sampler
        change = deployer.promote(served.settings, "ckpt-1", actor="test", reason="gate said so")
        assert change.notice is not None and change.notice.status == "swapped"
        assert served.health()["checkpoint"] == "ckpt-1"
        assert served.health()["sampler_path"] == path
        after = [pool.submit(served.chat) for _ in range(2)]
        _wait_for(lambda: len(service.sample_calls) == 7)
        service.hold.set()
        old = [trace(f.result(30)) for f in before]
        new = [trace(f.result(30)) for f in after]
    assert [m["checkpoint"] for m in old] == [None] * 4  # in flight: finished on the old one
    assert [m["checkpoint"] for m in new] == ["ckpt-1"] * 2
    assert [c[0] for c in service.sample_calls[1:]] == ["base"] * 4 + [path] * 2
    assert {"model_path": path, "base_model": None} in service.created
    trained = service.checkpoints[path]
    for meta in new:  # sampled from the promoted weights, not the base
        ids = meta["prompt_token_ids"], meta["completion_token_ids"]
        assert meta["completion_logprobs"] == pytest.approx(
            bigram_logprobs(trained, *ids, 1.0), abs=1e-5
        )
        assert meta["completion_logprobs"] != pytest.approx(
            bigram_logprobs(service.base, *ids, 1.0), abs=1e-3
        )
    assert served.health()["stats"]["failed"] == 0

    back = deployer.rollback(served.settings, actor="test", reason="users complained")
    assert back.notice is not None and back.notice.status == "swapped"
    assert trace(served.chat())["checkpoint"] is None
    assert service.sample_calls[-1][0] == "base"


def test_only_persistent_sampler_paths_are_served(served: Tinkered) -> None:
    headers = {"X-MetaClaw-Admin-Token": (served.settings.home / "policy-admin.token").read_text()}
    for path in ("tinker://run-1:train:0/weights/ckpt-2", "/tmp/local-adapter"):
        resp = httpx.post(
            served.url + "/admin/adapter",
            json={"checkpoint_id": "ckpt-2", "path": path},
            headers=headers,
            timeout=10,
        )
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_checkpoint"
    missing = httpx.post(
        served.url + "/admin/adapter",
        json={"checkpoint_id": "ckpt-3", "path": f"{FakeTinkerService.RUN}/sampler_weights/x"},
        headers=headers,
        timeout=10,
    )
    assert missing.status_code == 503 and missing.json()["error"]["code"] == "tinker_unavailable"
    assert served.health()["checkpoint"] is None  # a failed swap changed nothing


def test_a_tinker_outage_is_an_openai_shaped_503_and_the_server_recovers(
    served: Tinkered,
) -> None:
    served.service.fail_with = ConnectionError("tinker.example: connection refused")
    with pytest.raises(openai.InternalServerError) as err:
        served.chat()
    assert err.value.status_code == 503 and err.value.response.headers["retry-after"] == "1"
    assert err.value.body["code"] == "tinker_unavailable"
    assert "connection refused" in err.value.body["message"]
    health = served.health()
    assert health["stats"]["tinker_errors"] == 1
    assert "connection refused" in health["tinker"]["last_error"]
    served.service.fail_with = None
    assert served.chat().choices[0].message.content is not None


def test_a_hung_sample_call_times_out_with_a_503(served: Tinkered) -> None:
    served.service.hold = threading.Event()  # never set: Tinker does not answer
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as err:
        served.chat()
    assert SAMPLE_TIMEOUT_S <= time.monotonic() - started < 6 * SAMPLE_TIMEOUT_S
    assert err.value.status_code == 503 and err.value.body["code"] == "tinker_timeout"
    with pytest.raises(openai.InternalServerError) as streamed:  # a plain 503, not a 200 stream
        served.chat(stream=True)
    assert streamed.value.body["code"] == "tinker_timeout"
    assert served.health()["stats"]["tinker_timeouts"] == 2
    served.service.hold.set()


def test_a_paused_tinker_queue_and_failures_show_in_healthz_and_status(served: Tinkered) -> None:
    assert served.health()["tinker"]["queue_state"] == "active"
    assert "tinker queue" not in policy_status_line(served.settings)
    served.service.queue_state = (QueueState.PAUSED_RATE_LIMIT, "concurrent sampler limit")
    served.chat()
    tinker = served.health()["tinker"]
    assert tinker["queue_state"] == "paused_rate_limit"
    assert tinker["queue_reason"] == "concurrent sampler limit"
    served.service.fail_with = ConnectionError("service down")
    with pytest.raises(openai.InternalServerError):
        served.chat()
    line = policy_status_line(served.settings)
    assert line.startswith(f"policy server {served.url}/healthz: ok · engine tinker")
    assert "tinker queue paused_rate_limit (concurrent sampler limit)" in line
    assert "tinker failures 1 (timeouts 0); last: ConnectionError: service down" in line


def test_text_completions_are_sampled_by_tinker_too(served: Tinkered) -> None:
    prompt_text = "The capital of France is"
    resp = served.client.completions.create(
        model="policy", prompt=prompt_text, max_tokens=6, seed=3, temperature=1.0
    )
    meta = trace(resp)
    tok = served.service.tokenizer
    prompt = tok(prompt_text)["input_ids"]
    assert meta["prompt_token_ids"] == prompt == served.service.sample_calls[-1][1]
    completion = meta["completion_token_ids"]
    assert resp.choices[0].text == tok.decode(completion, skip_special_tokens=True)
    assert meta["completion_logprobs"] == pytest.approx(
        bigram_logprobs(served.service.base, prompt, completion, 1.0), abs=1e-5
    )
    with pytest.raises(openai.BadRequestError) as err:  # prompt scoring needs the local engine
        served.client.completions.create(
            model="policy", prompt=prompt_text, max_tokens=0, echo=True, logprobs=0
        )
    assert err.value.body["param"] == "logprobs"


def test_the_server_starts_on_the_promoted_tinker_checkpoint(tmp_path: Any) -> None:
    service = FakeTinkerService(build_tokenizer())
    tok = service.tokenizer
    path = _train_and_save(service, tok("hi")["input_ids"], tok(" there")["input_ids"])
    settings = tinker_settings(tmp_path / "home", free_port())
    add_candidates(settings.paths, {**candidate_row("ckpt-7", path, 7), "backend": "tinker"})
    change = deployer.promote(settings, "ckpt-7", actor="test", reason="before start")
    assert change.notice is not None and change.notice.status == "unreachable"
    engine = build_engine(settings, tinker_service=service)
    assert engine.policy.checkpoint_id == "ckpt-7" and engine.policy.path == path
    assert service.created[-1] == {"model_path": path, "base_model": None}


def _wait_for(condition: Any, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)
