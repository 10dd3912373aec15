"""The official `openai` SDK through the running proxy to the stub upstream."""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest

from tests.helpers import ProxyProcess
from tests.stubs.upstream_server import StubUpstream


@pytest.fixture()
def client(proxy: ProxyProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key="client-key", max_retries=0)


def _turn(proxy: ProxyProcess, turn_filter: str) -> dict:
    found = proxy.turns(turn_filter)
    assert len(found) == 1, found
    return found[0]


def test_non_streaming_reply_and_turn_recorded(
    client: openai.OpenAI, proxy: ProxyProcess, stub: StubUpstream
) -> None:
    marker = uuid.uuid4().hex
    resp = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": f"hello {marker}"}],
        extra_body={"custom_field": {"keep": True}},
    )
    assert resp.choices[0].message.content == f"Echo: hello {marker}"
    sent = [r for r in stub.requests() if marker in json.dumps(r["body"])][-1]
    assert sent["body"]["custom_field"] == {"keep": True}, "unknown fields must reach upstream"
    assert sent["headers"].get("authorization") == "Bearer client-key"

    turn = _turn(proxy, f"completion_text = 'Echo: hello {marker}'")
    assert turn["status"] == "ok" and turn["http_status"] == 200
    assert turn["client"] == "openai" and turn["endpoint"] == "/v1/chat/completions"
    assert turn["served_by"] == "upstream" and turn["source"] == "live"
    assert turn["finish_reason"] == "stop" and turn["stream"] is False
    assert turn["turn_index"] == 0 and turn["session_id"].startswith("sess-")
    assert json.loads(turn["request"])["custom_field"] == {"keep": True}
    assert json.loads(turn["response"])["id"] == resp.id
    assert json.loads(turn["usage"])["completion_tokens"] == resp.usage.completion_tokens
    assert turn["latency_ms"] > 0 and turn["ttft_ms"] == turn["latency_ms"]
    assert turn["ts_end"] >= turn["ts_start"]
    assert turn["prompt_token_ids"] is None and turn["policy_checkpoint"] is None


def test_streaming_passes_chunks_and_records_reassembled_reply(
    client: openai.OpenAI, proxy: ProxyProcess
) -> None:
    marker = uuid.uuid4().hex
    stream = client.chat.completions.create(
        model="gpt-test",
        messages=[{"role": "user", "content": f"stream {marker} [[chunk_delay:0.01]]"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"Echo: stream {marker}"
    assert len([c for c in chunks if c.choices]) > 3, "chunks must be passed through one by one"
    assert chunks[-1].usage is not None

    turn = _turn(proxy, f"completion_text = 'Echo: stream {marker}'")
    assert turn["stream"] is True and turn["finish_reason"] == "stop"
    assert 0 < turn["ttft_ms"] < turn["latency_ms"]
    assert json.loads(turn["usage"])["completion_tokens"] == chunks[-1].usage.completion_tokens
    response = json.loads(turn["response"])
    assert response["choices"][0]["message"]["content"] == text


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_round_trip(client: openai.OpenAI, proxy: ProxyProcess, stream: bool) -> None:
    marker = uuid.uuid4().hex
    tools = [{"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}]
    kwargs = {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": f"find {marker} [[tool:search]]"}],
        "tools": tools,
    }
    if stream:
        calls: dict[int, dict] = {}
        for chunk in client.chat.completions.create(**kwargs, stream=True):
            for tc in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                call = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                call["name"] += tc.function.name or ""
                call["arguments"] += tc.function.arguments or ""
        got = calls[0]
    else:
        message = client.chat.completions.create(**kwargs).choices[0].message
        got = {
            "name": message.tool_calls[0].function.name,
            "arguments": message.tool_calls[0].function.arguments,
        }
    assert got["name"] == "search"
    assert json.loads(got["arguments"]) == {"query": f"find {marker}"}

    turn = _turn(proxy, f"request::VARCHAR LIKE '%{marker}%'")
    assert turn["finish_reason"] == "tool_calls"
    recorded = json.loads(turn["tool_calls"])
    assert recorded[0]["function"]["name"] == "search"
    assert json.loads(recorded[0]["function"]["arguments"]) == {"query": f"find {marker}"}


def test_multi_turn_session_chains_without_headers(
    client: openai.OpenAI, proxy: ProxyProcess
) -> None:
    marker = uuid.uuid4().hex
    history = [
        {"role": "system", "content": "You are helpful. Time: 10:00"},
        {"role": "user", "content": f"first {marker}"},
    ]
    for i in range(3):
        reply = client.chat.completions.create(model="m", messages=history).choices[0].message
        history.append({"role": "assistant", "content": reply.content})
        history.append({"role": "user", "content": f"next {i} {marker}"})
        history[0] = {"role": "system", "content": f"You are helpful. Time: 10:0{i + 1}"}
    other = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"first {marker}"}]
    )
    assert other.choices[0].message.content

    turns = proxy.turns(f"request::VARCHAR LIKE '%{marker}%'")
    assert [t["turn_index"] for t in turns] == [0, 1, 2, 0]
    assert len({t["session_id"] for t in turns[:3]}) == 1, "one conversation, one session"
    assert turns[3]["session_id"] != turns[0]["session_id"], "a new conversation, a new session"


def test_explicit_session_identity_precedence(client: openai.OpenAI, proxy: ProxyProcess) -> None:
    marker = uuid.uuid4().hex
    msgs = [{"role": "user", "content": f"id {marker}"}]
    client.chat.completions.create(
        model="m",
        messages=msgs,
        user="u-1",
        extra_body={"prompt_cache_key": f"oc-{marker}:0"},
        extra_headers={"X-Session-Id": f"hdr-{marker}"},
    )
    client.chat.completions.create(
        model="m", messages=msgs, user="u-1", extra_body={"prompt_cache_key": f"oc-{marker}:0"}
    )
    client.chat.completions.create(model="m", messages=msgs, user=f"user-{marker}")
    sessions = [t["session_id"] for t in proxy.turns(f"request::VARCHAR LIKE '%{marker}%'")]
    assert sessions == [f"hdr-{marker}", f"oc-{marker}", f"user-{marker}"]


def test_models_endpoint(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["stub-model"]


def test_healthz_reports_ledger(proxy: ProxyProcess) -> None:
    health = proxy.health()
    assert health["status"] == "ok"
    assert health["ledger"]["failed"] == 0
    assert health["upstream"]["openai_configured"] is True


@pytest.mark.parametrize("stream", [False, True])
def test_policy_served_turn_records_tokens_and_hides_the_trace(
    proxy: ProxyProcess, stream: bool
) -> None:
    """A reply from our policy server carries token ids + logprobs: an on-policy turn."""
    marker = uuid.uuid4().hex
    body = {
        "model": "m",
        "stream": stream,
        "messages": [{"role": "user", "content": f"{marker} [[policy:ckpt-7]] [[words:4]]"}],
    }
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=10)
    assert resp.status_code == 200
    assert "metaclaw" not in resp.text, "clients never see the trace"
    turn = _turn(proxy, f"request::VARCHAR LIKE '%{marker}%'")
    assert turn["served_by"] == "policy" and turn["policy_checkpoint"] == "ckpt-7"
    assert turn["completion_token_ids"] == [100, 101, 102, 103]
    assert turn["completion_logprobs"] == [-0.5] * 4
    assert len(turn["prompt_token_ids"]) > 0
    assert "metaclaw" not in turn["response"]


def test_upstream_turn_is_off_policy(proxy: ProxyProcess, client: openai.OpenAI) -> None:
    marker = uuid.uuid4().hex
    client.chat.completions.create(model="m", messages=[{"role": "user", "content": marker}])
    turn = _turn(proxy, f"request::VARCHAR LIKE '%{marker}%'")
    assert turn["served_by"] == "upstream" and turn["completion_token_ids"] is None


@pytest.mark.parametrize("stream", [False, True])
def test_response_names_its_turn(proxy: ProxyProcess, stream: bool) -> None:
    marker = uuid.uuid4().hex
    body = {
        "model": "m",
        "stream": stream,
        "messages": [{"role": "user", "content": marker}],
        "user": f"u-{marker}",
    }
    resp = httpx.post(proxy.url + "/v1/chat/completions", json=body, timeout=10)
    turn = _turn(proxy, f"request::VARCHAR LIKE '%{marker}%'")
    assert resp.headers["x-metaclaw-turn-id"] == turn["turn_id"]
    assert resp.headers["x-metaclaw-session-id"] == f"u-{marker}"
