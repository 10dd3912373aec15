"""The official `anthropic` SDK through the proxy: translated to an OpenAI upstream, and native."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.helpers import ProxyProcess
from tests.stubs.upstream_server import StubUpstream

TOOLS = [{"name": "lookup", "description": "look up", "input_schema": {"type": "object"}}]


@pytest.fixture(scope="module", params=["translated", "native"])
def mode_proxy(
    request: pytest.FixtureRequest, stub: StubUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, ProxyProcess]]:
    env = {"METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1"}
    if request.param == "native":
        env["METACLAW_UPSTREAM__ANTHROPIC_BASE_URL"] = stub.base_url
    with ProxyProcess(tmp_path_factory.mktemp(request.param), env) as proc:
        yield request.param, proc


def _client(proxy: ProxyProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0)


def test_message_non_streaming(mode_proxy: tuple[str, ProxyProcess], stub: StubUpstream) -> None:
    mode, proxy = mode_proxy
    marker = uuid.uuid4().hex
    msg = _client(proxy).messages.create(
        model="claude-test",
        max_tokens=50,
        system="Be brief.",
        messages=[{"role": "user", "content": f"hi {marker}"}],
    )
    assert msg.content[0].text == f"Echo: hi {marker}"
    assert msg.stop_reason == "end_turn"
    assert msg.usage.output_tokens > 0
    sent = [r for r in stub.requests() if marker in json.dumps(r["body"])][-1]
    assert sent["path"] == ("/v1/messages" if mode == "native" else "/v1/chat/completions")

    turn = proxy.turns(f"request::VARCHAR LIKE '%{marker}%'")[0]
    assert turn["client"] == "anthropic" and turn["endpoint"] == "/v1/messages"
    assert turn["completion_text"] == f"Echo: hi {marker}"
    assert turn["finish_reason"] == "stop", "the ledger speaks OpenAI finish reasons"
    assert json.loads(turn["request"])["system"] == "Be brief.", "request kept as the client sent"
    assert json.loads(turn["response"])["type"] == "message", "response as the client got it"


def test_message_streaming_with_tool_use(mode_proxy: tuple[str, ProxyProcess]) -> None:
    _, proxy = mode_proxy
    marker = uuid.uuid4().hex
    with _client(proxy).messages.stream(
        model="claude-test",
        max_tokens=50,
        tools=TOOLS,
        messages=[{"role": "user", "content": f"[[text:checking]] [[tool:lookup]] {marker}"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "checking"
    tool = next(b for b in final.content if b.type == "tool_use")
    assert tool.name == "lookup" and tool.input == {"query": marker}
    assert final.stop_reason == "tool_use"

    turn = proxy.turns(f"request::VARCHAR LIKE '%{marker}%'")[0]
    assert turn["stream"] is True and turn["status"] == "ok"
    assert turn["finish_reason"] == "tool_calls" and turn["completion_text"] == "checking"
    call = json.loads(turn["tool_calls"])[0]
    assert call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"query": marker}
    assert 0 < turn["ttft_ms"] <= turn["latency_ms"]


def test_tool_result_continues_the_session(mode_proxy: tuple[str, ProxyProcess]) -> None:
    _, proxy = mode_proxy
    marker = uuid.uuid4().hex
    client = _client(proxy)
    first = client.messages.create(
        model="c",
        max_tokens=50,
        tools=TOOLS,
        messages=[{"role": "user", "content": f"[[tool:lookup]] {marker}"}],
    )
    tool = next(b for b in first.content if b.type == "tool_use")
    client.messages.create(
        model="c",
        max_tokens=50,
        tools=TOOLS,
        messages=[
            {"role": "user", "content": f"[[tool:lookup]] {marker}"},
            {
                "role": "assistant",
                "content": [b.model_dump(exclude_none=True) for b in first.content],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": tool.id, "content": "42"}],
            },
        ],
    )
    turns = proxy.turns(f"request::VARCHAR LIKE '%{marker}%'")
    assert [t["turn_index"] for t in turns] == [0, 1]
    assert turns[0]["session_id"] == turns[1]["session_id"]


def test_upstream_error_is_anthropic_shaped(mode_proxy: tuple[str, ProxyProcess]) -> None:
    _, proxy = mode_proxy
    with pytest.raises(anthropic.APIStatusError) as info:
        _client(proxy).messages.create(
            model="c", max_tokens=5, messages=[{"role": "user", "content": "[[error:429]]"}]
        )
    assert info.value.status_code == 429
    assert info.value.body["type"] == "error"
    assert info.value.body["error"]["type"] in {"rate_limit_error", "api_error"}


def test_bad_anthropic_request(mode_proxy: tuple[str, ProxyProcess], tmp_path: Path) -> None:
    _, proxy = mode_proxy
    with pytest.raises(anthropic.BadRequestError) as info:
        _client(proxy).messages.create(
            model="c", max_tokens=5, messages=[{"role": "system", "content": "no"}]
        )
    assert info.value.body["error"]["type"] == "invalid_request_error"
    assert "role" in info.value.body["error"]["message"]
