"""What the proxy passes on and what it records stays faithful to the upstream (issue 16,
item 10): rate-limit advice on errors, one usage shape in the ledger, usage on OpenAI streams the
client did not ask it for (without showing the client the extra chunk), and a Claude client's
own model choice. The proxy app runs in-process; upstreams are real servers on sockets."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from metaclaw.config import Settings, SkillsSettings, UpstreamSettings
from metaclaw.proxy.app import create_app
from tests.helpers import rows
from tests.raw_upstream import RawUpstream
from tests.served_app import ServedApp
from tests.stubs.upstream_server import StubUpstream

LIMITED = (
    b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 7\r\n"
    b"x-ratelimit-remaining-requests: 0\r\nx-ratelimit-reset-requests: 6.5s\r\n"
    b"anthropic-ratelimit-requests-remaining: 0\r\nx-unrelated: no"
)
OPENAI_429 = b'{"error": {"message": "slow down", "type": "rate_limit_error", "code": null}}'
ANTHROPIC_429 = b'{"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}'


@pytest.fixture(scope="module")
def limited() -> Iterator[RawUpstream]:
    server = RawUpstream({"/messages": (LIMITED, ANTHROPIC_429), "/": (LIMITED, OPENAI_429)})
    yield server
    server.close()


@asynccontextmanager
async def _proxy(home: Path, **upstream: str) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    settings = Settings(
        home=home, upstream=UpstreamSettings(**upstream), skills=SkillsSettings(enabled=False)
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", timeout=30
        ) as client,
    ):
        yield client, settings


def _turn(settings: Settings, marker: str) -> dict[str, Any]:
    found = rows(
        settings.paths,
        f"SELECT usage, request, status FROM turns WHERE request::VARCHAR LIKE '%{marker}%'",
    )
    assert len(found) == 1, found
    return found[0]


def test_rate_limit_advice_reaches_the_client(limited: RawUpstream, tmp_path: Path) -> None:
    async def scenario() -> list[httpx.Response]:
        async with _proxy(
            tmp_path / "home", base_url=limited.url + "/v1", anthropic_base_url=limited.url
        ) as (client, _):
            chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            claude = {**chat, "max_tokens": 5}
            return [
                await client.post("/v1/chat/completions", json=chat),
                await client.post("/v1/messages", json=claude),
            ]

    for resp in asyncio.run(scenario()):
        assert resp.status_code == 429 and "slow down" in resp.text
        assert resp.headers["retry-after"] == "7"
        assert resp.headers["x-ratelimit-remaining-requests"] == "0"
        assert resp.headers["x-ratelimit-reset-requests"] == "6.5s"
        assert resp.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert "x-unrelated" not in resp.headers


def test_usage_is_recorded_in_one_shape_and_for_every_openai_stream(
    stub: StubUpstream, tmp_path: Path
) -> None:
    marker = uuid.uuid4().hex

    async def scenario() -> tuple[list[str], list[str], Settings]:
        async with _proxy(
            tmp_path / "home", base_url=stub.base_url + "/v1", anthropic_base_url=stub.base_url
        ) as (client, settings):

            def chat(tag: str) -> dict[str, Any]:
                return {
                    "model": "m",
                    "stream": True,
                    "messages": [{"role": "user", "content": f"{marker} {tag} [[words:4]]"}],
                }

            async def lines(body: dict[str, Any]) -> list[str]:
                async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                    return [line async for line in resp.aiter_lines() if line.startswith("data")]

            plain = await lines(chat("plain"))
            asked = await lines({**chat("asked"), "stream_options": {"include_usage": True}})
            claude = {
                "model": "claude-x",
                "max_tokens": 9,
                "messages": [{"role": "user", "content": f"{marker} claude [[words:3]]"}],
            }
            assert (await client.post("/v1/messages", json=claude)).status_code == 200
            return plain, asked, settings

    plain, asked, settings = asyncio.run(scenario())
    usage_chunks = [line for line in plain if '"usage":{' in line.replace(" ", "")]
    assert usage_chunks == [], "the client got a usage chunk it did not ask for"
    assert plain[-1] == "data: [DONE]"
    assert any('"choices":[]' in line.replace(" ", "") for line in asked), asked
    for tag, completion in (("plain", 4), ("asked", 4), ("claude", 3)):
        usage = json.loads(_turn(settings, f"{marker} {tag}")["usage"])
        assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}, usage
        assert usage["completion_tokens"] == completion and usage["prompt_tokens"] > 0
        assert usage["total_tokens"] == usage["prompt_tokens"] + completion


def test_a_claude_clients_model_is_not_replaced(stub: StubUpstream, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex

    async def scenario() -> int:
        async with _proxy(
            tmp_path / "home",
            base_url=stub.base_url + "/v1",
            anthropic_base_url=stub.base_url,
            model="gpt-for-openai",
        ) as (client, _):
            body = {
                "model": "claude-own",
                "max_tokens": 9,
                "messages": [{"role": "user", "content": marker}],
            }
            return (await client.post("/v1/messages", json=body)).status_code

    assert asyncio.run(scenario()) == 200
    sent = [r for r in stub.requests() if marker in json.dumps(r["body"])]
    assert [r["body"]["model"] for r in sent] == ["claude-own"]


def test_a_translated_anthropic_stream_reports_real_input_tokens(
    stub: StubUpstream, tmp_path: Path
) -> None:
    """An OpenAI upstream streams usage last; the client's final message still has it."""
    import anthropic

    settings = Settings(
        home=tmp_path / "home",
        upstream=UpstreamSettings(base_url=stub.base_url + "/v1"),
        skills=SkillsSettings(enabled=False),
    )
    with ServedApp(create_app(settings)) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0)
        with client.messages.stream(
            model="claude-x",
            max_tokens=20,
            messages=[{"role": "user", "content": "five words in the prompt [[words:3]]"}],
        ) as stream:
            message = stream.get_final_message()
    assert message.usage.output_tokens == 3
    assert message.usage.input_tokens == 6  # the stub counts the prompt's words, directive too
