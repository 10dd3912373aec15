"""Tests for the stub upstream LLM server, driven through the official SDK clients.

The stub stands in for the hosted LLM API in MetaClaw's tests and benchmarks, so these tests
check that the real ``openai`` and ``anthropic`` clients accept what it sends.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from tests.stubs.upstream_server import StubUpstream, parse_directives, split_words


@pytest.fixture(scope="module")
def stub() -> Iterator[StubUpstream]:
    with StubUpstream() as server:
        yield server


@pytest.fixture()
def oai(stub: StubUpstream) -> Iterator[openai.OpenAI]:
    # max_retries=0: the SDKs retry 429/5xx and connection errors by default.
    with openai.OpenAI(base_url=stub.base_url + "/v1", api_key="sk-test", max_retries=0) as c:
        yield c


@pytest.fixture()
def claude(stub: StubUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=stub.base_url, api_key="sk-ant-test", max_retries=0) as c:
        yield c


@pytest.fixture()
def raw(stub: StubUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stub.base_url, trust_env=False, timeout=10) as client:
        yield client


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# ----- pure helpers ------------------------------------------------------------------------


def test_split_words_round_trips() -> None:
    for text in ["Echo: hi there", "  lead and trail  ", "one", "", "   "]:
        assert "".join(split_words(text)) == text
    assert split_words("Echo: hi there") == ["Echo:", " hi", " there"]


def test_parse_directives() -> None:
    d = parse_directives("look up [[tool:search]] cats [[delay:0.5]] [[text:a ] b]] [[drop]]")
    assert d.tools == ["search"]
    assert d.delay == 0.5
    assert d.text == "a ] b"
    assert d.drop
    assert d.cleaned == "look up  cats"


# ----- process, health, recording ----------------------------------------------------------


def test_ready_and_health(stub: StubUpstream, raw: httpx.Client) -> None:
    assert stub.base_url.startswith("http://127.0.0.1:")
    assert stub.port > 0
    assert raw.get("/health").json() == {"ok": True}


def test_models(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list()] == ["stub-model"]


def test_records_requests(stub: StubUpstream, oai: openai.OpenAI) -> None:
    stub.reset()
    assert stub.requests() == []
    oai.chat.completions.create(model="gpt-x", messages=_user("record me"), temperature=0.5)
    (rec,) = stub.requests()
    assert rec["path"] == "/v1/chat/completions"
    assert rec["headers"]["authorization"] == "Bearer sk-test"
    assert rec["body"]["model"] == "gpt-x"
    assert rec["body"]["temperature"] == 0.5
    assert rec["body"]["messages"] == _user("record me")


def test_invalid_json_is_400(raw: httpx.Client) -> None:
    resp = raw.post("/v1/chat/completions", content=b"{nope")
    assert resp.status_code == 400
    assert resp.json()["error"]["type"] == "invalid_request_error"


# ----- OpenAI ------------------------------------------------------------------------------


def test_openai_plain(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(model="gpt-x", messages=_user("hello  world"))
    assert out.model == "gpt-x"
    assert out.id.startswith("chatcmpl-stub-")
    assert out.choices[0].message.content == "Echo: hello  world"
    assert out.choices[0].finish_reason == "stop"
    assert out.usage is not None
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (2, 3)
    assert out.usage.total_tokens == 5


def test_openai_content_parts_and_empty(oai: openai.OpenAI) -> None:
    parts = [{"type": "text", "text": "part one "}, {"type": "text", "text": "two"}]
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": parts},
    ]
    out = oai.chat.completions.create(model="m", messages=messages)
    assert out.choices[0].message.content == "Echo: part one two"
    out = oai.chat.completions.create(model="m", messages=_user("[[finish:length]]"))
    assert out.choices[0].message.content == "Echo: (empty)"
    assert out.choices[0].finish_reason == "length"


def test_openai_stream_matches_plain(oai: openai.OpenAI) -> None:
    text = "the quick  brown fox"
    plain = oai.chat.completions.create(model="m", messages=_user(text))
    chunks = list(
        oai.chat.completions.create(
            model="m",
            messages=_user(text),
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == plain.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 5
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


def test_openai_words(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(model="m", messages=_user("[[words:50]]"))
    assert out.choices[0].message.content == " ".join(f"w{i}" for i in range(50))
    assert out.usage is not None and out.usage.completion_tokens == 50


def test_openai_tool_call(oai: openai.OpenAI) -> None:
    out = oai.chat.completions.create(model="m", messages=_user("weather in Paris [[tool:lookup]]"))
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.id.startswith("call_stub_")
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"query": "weather in Paris"}

    out = oai.chat.completions.create(model="m", messages=_user("x [[tool:t]] [[text:on it]]"))
    assert out.choices[0].message.content == "on it"
    assert out.choices[0].message.tool_calls is not None


def test_openai_tool_call_stream(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="m", messages=_user("weather in Paris [[tool:lookup]]"), stream=True
    )
    name, args, call_id, finish, text = "", "", None, None, ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        text += delta.content or ""
        for tc in delta.tool_calls or []:
            assert tc.index == 0
            call_id = tc.id or call_id
            if tc.function and tc.function.name:
                name += tc.function.name
            if tc.function and tc.function.arguments:
                args += tc.function.arguments
        finish = chunk.choices[0].finish_reason or finish
    assert text == ""
    assert call_id is not None and call_id.startswith("call_stub_")
    assert name == "lookup"
    assert json.loads(args) == {"query": "weather in Paris"}
    assert finish == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_openai_error(oai: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        oai.chat.completions.create(model="m", messages=_user("hi [[error:503]]"), stream=stream)
    assert info.value.status_code == 503
    assert info.value.code == "stub_503"
    with pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="m", messages=_user("[[error:429]]"), stream=stream)


def test_openai_drop(oai: openai.OpenAI, raw: httpx.Client) -> None:
    with pytest.raises(openai.APIConnectionError):
        oai.chat.completions.create(model="m", messages=_user("[[drop]]"))
    body = {"messages": _user("a b c d [[drop]]"), "stream": True}
    events: list[str] = []
    with (
        pytest.raises(httpx.RemoteProtocolError),
        raw.stream("POST", "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status_code == 200
        events.extend(line for line in resp.iter_lines() if line)
    assert len(events) == 2
    assert not any("[DONE]" in e for e in events)


def test_garbage(raw: httpx.Client) -> None:
    resp = raw.post("/v1/chat/completions", json={"messages": _user("[[garbage]]")})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.content == b"not json"


def test_delay_and_chunk_delay(oai: openai.OpenAI) -> None:
    t0 = time.perf_counter()
    oai.chat.completions.create(model="m", messages=_user("[[delay:0.2]]"))
    assert time.perf_counter() - t0 >= 0.2
    t0 = time.perf_counter()
    msgs = _user("a b c [[chunk_delay:0.05]]")
    list(oai.chat.completions.create(model="m", messages=msgs, stream=True))
    assert time.perf_counter() - t0 >= 0.05 * 5  # role, 4 words, finish, [DONE]


# ----- Anthropic ---------------------------------------------------------------------------


def test_anthropic_plain(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="claude-x", max_tokens=100, system="sys prompt", messages=_user("hi there")
    )
    assert msg.id.startswith("msg_stub_")
    assert msg.model == "claude-x"
    assert msg.stop_reason == "end_turn"
    assert [b.type for b in msg.content] == ["text"]
    assert msg.content[0].text == "Echo: hi there"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (4, 3)


def test_anthropic_stream_matches_plain(stub: StubUpstream, claude: anthropic.Anthropic) -> None:
    base_url = stub.base_url
    kwargs = {"model": "c", "max_tokens": 100, "messages": _user("stream  me please")}
    plain = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == plain.content[0].text == "Echo: stream  me please"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4

    # The SDK swallows ``ping`` events, so check the raw event order over HTTP.
    body = {**kwargs, "stream": True}
    resp = httpx.post(base_url + "/v1/messages", json=body, trust_env=False, timeout=10)
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = [line[7:] for line in resp.text.splitlines() if line.startswith("event: ")]
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert events[3:-3] == ["content_block_delta"] * 4
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_anthropic_skips_tool_result_turns(claude: anthropic.Anthropic) -> None:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "find cats [[tool:search]]"}]},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "search", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}],
        },
    ]
    msg = claude.messages.create(model="c", max_tokens=10, messages=messages)
    assert msg.stop_reason == "tool_use"


def test_anthropic_tool_use(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(
        model="c", max_tokens=10, messages=_user("find cats [[tool:search]] [[text:Looking.]]")
    )
    assert msg.stop_reason == "tool_use"
    text, tool = msg.content
    assert text.type == "text" and text.text == "Looking."
    assert tool.type == "tool_use"
    assert tool.id.startswith("toolu_")
    assert (tool.name, tool.input) == ("search", {"query": "find cats"})


def test_anthropic_tool_use_stream(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="c", max_tokens=10, messages=_user("find cats [[tool:search]]")
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (tool,) = final.content
    assert tool.type == "tool_use"
    assert (tool.name, tool.input) == ("search", {"query": "find cats"})


def test_anthropic_max_tokens_finish(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(model="c", max_tokens=10, messages=_user("[[finish:length]]"))
    assert msg.stop_reason == "max_tokens"


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_error(claude: anthropic.Anthropic, stream: bool) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        claude.messages.create(
            model="c", max_tokens=10, messages=_user("[[error:529]]"), stream=stream
        )
    assert info.value.status_code == 529
    assert isinstance(info.value.body, dict)
    assert info.value.body["error"]["type"] == "api_error"


def test_anthropic_records_headers(stub: StubUpstream, claude: anthropic.Anthropic) -> None:
    stub.reset()
    claude.messages.create(model="c", max_tokens=10, messages=_user("hi"))
    (rec,) = stub.requests()
    assert rec["path"] == "/v1/messages"
    # anthropic>=2 sends api_key as "Authorization: Bearer"; older SDKs used x-api-key.
    headers = rec["headers"]
    assert "sk-ant-test" in (headers.get("x-api-key"), headers.get("authorization", "")[7:])
    assert "anthropic-version" in rec["headers"]
    assert rec["body"]["max_tokens"] == 10
