"""Azure OpenAI for the critic, the judge and the proxy upstream route, against a local stub
that answers only the Azure routes (deployment path, api-version query, api-key header)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from pydantic import BaseModel

from metaclaw.config import Settings
from metaclaw.providers import azure_chat_request
from metaclaw.scoring.judge import CallBudget, Judge, judge_endpoint
from metaclaw.scoring.prompt import JudgeCase
from metaclaw.skills.critic import Critic
from tests.stubs.azure_server import AzureStub

KEY = "azure-test-key"


@pytest.fixture(scope="module")
def azure() -> Iterator[AzureStub]:
    with AzureStub(KEY) as stub:
        yield stub


@pytest.fixture()
def azure_env(azure: AzureStub, monkeypatch: pytest.MonkeyPatch) -> AzureStub:
    monkeypatch.setenv("METACLAW_CONFIG", "/nonexistent/metaclaw.toml")
    for name in list(os.environ):
        if name.startswith(("METACLAW_CRITIC", "METACLAW_JUDGE", "METACLAW_AZURE")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", azure.url)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_VERSION", "2024-10-21")
    return azure


class Answer(BaseModel):
    category: str


def test_critic_uses_the_azure_deployment(azure_env: AzureStub, home: Path) -> None:
    azure_env.set_reply('{"category": "tool_misuse"}')
    critic = Critic.from_settings(Settings(azure_openai_deployment="gpt-5.2"))  # records in home
    assert isinstance(critic.client, openai.AzureOpenAI)
    assert critic.ask("system", "why did it fail?", Answer).category == "tool_misuse"
    last = azure_env.requests()[-1]
    assert last["path"] == "/openai/deployments/gpt-5.2/chat/completions"
    assert last["query"] == {"api-version": "2024-10-21"}
    assert last["headers"]["api-key"] == KEY
    assert last["body"]["messages"][1]["content"] == "why did it fail?"


def test_judge_votes_through_the_azure_deployment(azure_env: AzureStub) -> None:
    azure_env.set_reply("Reason: it answered.\nScore: +1")
    settings = Settings(azure_openai_deployment="judge-dep", judge={"votes": 1})
    endpoint = judge_endpoint(settings)
    assert endpoint is not None and endpoint.azure_api_version == "2024-10-21"
    case = JudgeCase("t1", "s1", ({"role": "user", "content": "judge this"},), "none")

    async def run() -> object:
        async with Judge(endpoint, settings.judge) as judge:
            assert isinstance(judge._client, openai.AsyncAzureOpenAI)
            return await judge.judge(case, CallBudget(5))

    outcome = asyncio.run(run())
    assert [v.value for v in outcome.votes] == [1]  # type: ignore[attr-defined]
    last = azure_env.requests()[-1]
    assert last["path"] == "/openai/deployments/judge-dep/chat/completions"
    assert last["headers"]["api-key"] == KEY and last["body"]["model"] == "judge-dep"


def test_wrong_key_or_route_is_refused_like_azure(azure_env: AzureStub) -> None:
    url, headers = azure_chat_request(azure_env.url, "up-dep", "2024-10-21", KEY)
    body = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}
    ok = httpx.post(url, headers=headers, json=body, timeout=10)
    assert ok.status_code == 200 and ok.json()["model"] == "up-dep"
    bad_key = httpx.post(url, headers={**headers, "api-key": "wrong"}, json=body, timeout=10)
    assert bad_key.status_code == 401
    no_version = httpx.post(url.split("?")[0], headers=headers, json=body, timeout=10)
    assert no_version.status_code == 404
