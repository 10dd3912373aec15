"""The policy server's ASGI app in-process (tiny model): overload, auth and error shapes,
through the official async `openai` client over an ASGI transport."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import openai
import pytest
import torch

from metaclaw.serving.app import create_app
from metaclaw.serving.engine import PolicyEngine
from tests.serving_helpers import tiny_model_dir

torch.set_num_threads(1)
MESSAGES = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


def _client(app: object, key: str = "k") -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost")
    return openai.AsyncOpenAI(
        base_url="http://localhost/v1", api_key=key, http_client=http, max_retries=0
    )


def test_a_full_queue_answers_503_and_admitted_requests_complete(
    model_dir: Path, tmp_path: Path
) -> None:
    engine = PolicyEngine(model_dir, name="tiny", max_batch=1, max_queue=1).start()
    app = create_app(engine, home=tmp_path, request_timeout_s=60)

    async def scenario() -> list:
        client = _client(app)
        long = {
            "model": "m",
            "messages": MESSAGES,
            "max_tokens": 400,
            "temperature": 0.0,
            "extra_body": {"ignore_eos": True},
        }
        first = asyncio.create_task(client.chat.completions.create(**long))
        while engine.active == 0:  # wait until it runs: the one batch slot is taken
            await asyncio.sleep(0.005)
        second = asyncio.create_task(client.chat.completions.create(**long))
        while engine.queued == 0:
            await asyncio.sleep(0.005)
        try:
            await client.chat.completions.create(**long)
        except openai.APIStatusError as exc:
            refused = exc
        return [refused, await first, await second]

    try:
        refused, first, second = asyncio.run(scenario())
    finally:
        engine.close()
    assert refused.status_code == 503
    assert refused.response.headers["retry-after"] == "1"
    assert refused.body["code"] == "overloaded" and "policy.max_queue" in refused.body["message"]
    assert first.usage.completion_tokens == second.usage.completion_tokens == 400


def test_api_key_is_required_when_configured(model_dir: Path, tmp_path: Path) -> None:
    engine = PolicyEngine(model_dir, name="tiny").start()
    app = create_app(engine, home=tmp_path, request_timeout_s=60, api_key="s3cret")

    async def scenario() -> tuple:
        with pytest.raises(openai.AuthenticationError, match=r"policy\.api_key"):
            await _client(app, key="wrong").models.list()
        ok = await _client(app, key="s3cret").chat.completions.create(
            model="m", messages=MESSAGES, max_tokens=3
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://localhost"
        ) as http:
            health = await http.get("/healthz")  # open without a key
        return ok, health

    try:
        ok, health = asyncio.run(scenario())
    finally:
        engine.close()
    assert ok.usage.completion_tokens <= 3 and health.status_code == 200


def test_tools_are_described_and_the_prompt_limit_is_enforced(
    model_dir: Path, tmp_path: Path
) -> None:
    engine = PolicyEngine(model_dir, name="tiny", max_context_tokens=64).start()
    app = create_app(engine, home=tmp_path, request_timeout_s=60)
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {}}}]

    async def scenario() -> tuple:
        client = _client(app)
        with pytest.raises(openai.BadRequestError, match="max_context_tokens") as info:
            await client.chat.completions.create(model="m", messages=MESSAGES, tools=tools)
        short = await client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=500)
        return info.value, short

    try:
        err, short = asyncio.run(scenario())
    finally:
        engine.close()
    assert err.body["code"] == "context_length_exceeded"  # the tool text made it too long
    ext = short.model_extra["metaclaw"]
    assert len(ext["prompt_token_ids"]) + len(ext["completion_token_ids"]) <= 64
