"""Anthropic Messages <-> OpenAI Chat Completions translation, tied to the SSE parser and the
stream accumulators the proxy uses alongside it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message

from metaclaw.proxy.accumulate import AnthropicStreamAccumulator, OpenAIStreamAccumulator
from metaclaw.proxy.anthropic_compat import (
    OpenAIToAnthropicStream,
    anthropic_request_to_openai,
    encode_anthropic_event,
    finish_reason_to_stop_reason,
    openai_error_to_anthropic,
    openai_response_to_anthropic,
)
from metaclaw.proxy.sse import SSEParser

from .test_accumulate import USAGE, oai_chunk, openai_text_stream, openai_tool_stream

PNG_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)

# A Claude-Code-shaped agent conversation: system blocks with cache_control, a user turn with
# an image, an assistant turn with thinking + text + two parallel tool calls, the user turn with
# both results (one an error, one with an image) plus follow-up text, and a final plain turn.
ANTHROPIC_REQUEST: dict[str, Any] = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 1024,
    "system": [
        {"type": "text", "text": "You are a coding agent."},
        {"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}},
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image, and what time is it?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Two tools needed.", "signature": "EqQBCkgI"},
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_A",
                    "name": "describe_image",
                    "input": {"detail": "high"},
                },
                {"type": "tool_use", "id": "toolu_B", "name": "now", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_A",
                    "content": [
                        {"type": "text", "text": "A red pixel."},
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/crop.png"},
                        },
                    ],
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_B",
                    "content": "clock unavailable",
                    "is_error": True,
                },
                {"type": "text", "text": "Use UTC if you must guess."},
            ],
        },
        {"role": "assistant", "content": "A red pixel; time unknown."},
        {"role": "user", "content": "Thanks!"},
    ],
    "tools": [
        {
            "name": "describe_image",
            "description": "Describe an image.",
            "input_schema": {
                "type": "object",
                "properties": {"detail": {"type": "string", "enum": ["low", "high"]}},
            },
        },
        {"name": "now", "input_schema": {"type": "object", "properties": {}}},
    ],
    "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "stop_sequences": ["\n\nHuman:"],
    "temperature": 0.2,
    "top_p": 0.9,
    "top_k": 40,
    "thinking": {"type": "enabled", "budget_tokens": 2048},
    "metadata": {"user_id": "user-123"},
    "stream": True,
}


def test_request_translation_keeps_conversation_order() -> None:
    out = anthropic_request_to_openai(ANTHROPIC_REQUEST)
    assert out["messages"] == [
        {"role": "system", "content": "You are a coding agent.\n\nBe terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image, and what time is it?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + PNG_B64}},
            ],
        },
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                {
                    "id": "toolu_A",
                    "type": "function",
                    "function": {"name": "describe_image", "arguments": '{"detail": "high"}'},
                },
                {
                    "id": "toolu_B",
                    "type": "function",
                    "function": {"name": "now", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_A", "content": "A red pixel."},
        {"role": "tool", "tool_call_id": "toolu_B", "content": "Error: clock unavailable"},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/crop.png"}},
                {"type": "text", "text": "Use UTC if you must guess."},
            ],
        },
        {"role": "assistant", "content": "A red pixel; time unknown."},
        {"role": "user", "content": "Thanks!"},
    ]


def test_request_translation_options() -> None:
    out = anthropic_request_to_openai(ANTHROPIC_REQUEST, model="qwen3-8b")
    rest = {k: v for k, v in out.items() if k != "messages"}
    assert rest == {
        "model": "qwen3-8b",
        "max_tokens": 1024,
        "stop": ["\n\nHuman:"],
        "temperature": 0.2,
        "top_p": 0.9,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "describe_image",
                    "description": "Describe an image.",
                    "parameters": {
                        "type": "object",
                        "properties": {"detail": {"type": "string", "enum": ["low", "high"]}},
                    },
                },
            },
            {
                "type": "function",
                "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
            },
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "user": "user-123",
    }
    assert anthropic_request_to_openai(ANTHROPIC_REQUEST)["model"] == "claude-sonnet-4-5"


@pytest.mark.parametrize(
    ("anthropic_choice", "openai_choice"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "now"}, {"type": "function", "function": {"name": "now"}}),
    ],
)
def test_tool_choice_mapping(anthropic_choice: dict[str, Any], openai_choice: Any) -> None:
    body = {"model": "m", "messages": [], "tool_choice": anthropic_choice}
    assert anthropic_request_to_openai(body)["tool_choice"] == openai_choice


def test_request_minimal_non_streaming() -> None:
    out = anthropic_request_to_openai(
        {
            "model": "m",
            "system": "Be nice.",
            "max_tokens": 5,
            "stream": False,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"text": "b", "type": "text"}],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "c"}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1"}]},
            ],
        }
    )
    assert out == {
        "model": "m",
        "max_tokens": 5,
        "stream": False,
        "messages": [
            {"role": "system", "content": "Be nice."},
            {"role": "user", "content": "a\nb"},  # text-only parts collapse to a string
            {"role": "assistant", "content": "c"},
            {"role": "tool", "tool_call_id": "t1", "content": ""},  # no empty user turn after
        ],
    }


def test_assistant_tool_use_only_has_null_content() -> None:
    out = anthropic_request_to_openai(
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "content": [
                        {"type": "redacted_thinking", "data": "xx"},
                        {"type": "tool_use", "id": "t", "name": "f", "input": {"q": "café"}},
                    ],
                }
            ],
        }
    )
    assert out["messages"] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "t",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"q": "café"}'},
                }
            ],
        }
    ]


# --------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------


def test_openai_response_to_anthropic_text() -> None:
    resp = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hi there"},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
    }
    out = openai_response_to_anthropic(resp)
    assert out == {
        "id": "msg_chatcmpl-9",
        "type": "message",
        "role": "assistant",
        "model": "gpt-4o",
        "content": [{"type": "text", "text": "Hi there"}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 42, "output_tokens": 9},
    }
    assert openai_response_to_anthropic(resp, model="claude-x")["model"] == "claude-x"
    Message.model_validate(out)


def test_openai_response_to_anthropic_tool_calls() -> None:
    resp = {
        "id": "c1",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "a", "arguments": '{"x": 1}'},
                        },
                        {
                            "id": "call_2",
                            "type": "function",
                            "function": {"name": "b", "arguments": "{oops"},
                        },
                        {
                            "id": "call_3",
                            "type": "function",
                            "function": {"name": "c", "arguments": "[1]"},
                        },
                    ],
                },
                # Some servers say "stop" after tool calls; the agent loop needs "tool_use".
                "finish_reason": "stop",
            }
        ],
    }
    out = openai_response_to_anthropic(resp)
    assert out["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "a", "input": {"x": 1}},
        {"type": "tool_use", "id": "call_2", "name": "b", "input": {}},
        {"type": "tool_use", "id": "call_3", "name": "c", "input": {}},
    ]
    assert out["stop_reason"] == "tool_use"
    assert out["usage"] == {"input_tokens": 0, "output_tokens": 0}


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
        ("something_new", "end_turn"),
    ],
)
def test_finish_reason_mapping(finish_reason: str | None, stop_reason: str) -> None:
    assert finish_reason_to_stop_reason(finish_reason) == stop_reason
    resp = {"id": "x", "choices": [{"message": {"content": "t"}, "finish_reason": finish_reason}]}
    assert openai_response_to_anthropic(resp)["stop_reason"] == stop_reason


def test_refusal_becomes_text() -> None:
    resp = {
        "id": "x",
        "choices": [
            {
                "message": {"role": "assistant", "content": None, "refusal": "I can't help."},
                "finish_reason": "content_filter",
            }
        ],
    }
    out = openai_response_to_anthropic(resp)
    assert out["content"] == [{"type": "text", "text": "I can't help."}]
    assert out["stop_reason"] == "refusal"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            {"error": {"message": "bad", "type": "invalid_request_error"}},
            ("invalid_request_error", "bad"),
        ),
        (401, {"error": {"message": "no key"}}, ("authentication_error", "no key")),
        (403, {"error": "nope"}, ("permission_error", "nope")),
        (404, {"message": "no model"}, ("not_found_error", "no model")),
        (413, None, ("request_too_large", "Upstream returned HTTP 413")),
        (429, {"error": {"message": "slow down"}}, ("rate_limit_error", "slow down")),
        (529, {}, ("overloaded_error", "Upstream returned HTTP 529")),
        (500, {"detail": "boom"}, ("api_error", "boom")),
        (
            422,
            {"detail": [{"loc": ["body"], "msg": "x"}]},
            ("api_error", '[{"loc":["body"],"msg":"x"}]'),
        ),
    ],
)
def test_error_mapping(status: int, body: dict[str, Any] | None, expected: tuple[str, str]) -> None:
    assert openai_error_to_anthropic(status, body) == {
        "type": "error",
        "error": {"type": expected[0], "message": expected[1]},
    }


def test_encode_anthropic_event() -> None:
    assert (
        encode_anthropic_event("ping", {"type": "ping"})
        == b'event: ping\ndata: {"type":"ping"}\n\n'
    )
    encoded = encode_anthropic_event("x", {"t": "é"})
    assert encoded == b'event: x\ndata: {"t":"\xc3\xa9"}\n\n'


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


def translate(chunks: list[dict[str, Any]], **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    stream = OpenAIToAnthropicStream(**{"model": "claude-proxy", "message_id": "msg_1", **kwargs})
    events = stream.start()
    for chunk in chunks:
        events += stream.add(chunk)
    events += stream.finish()
    return events


def test_stream_event_sequence_for_text_then_tools() -> None:
    chunks = [oai_chunk({"role": "assistant", "content": ""}), oai_chunk({"content": "Checking."})]
    chunks += openai_tool_stream()[1:]
    events = translate(chunks)
    assert [(t, d.get("index"), d.get("delta", {}).get("type")) for t, d in events] == [
        ("message_start", None, None),
        ("ping", None, None),
        ("content_block_start", 0, None),
        ("content_block_delta", 0, "text_delta"),
        ("content_block_stop", 0, None),
        ("content_block_start", 1, None),
        ("content_block_delta", 1, "input_json_delta"),
        ("content_block_delta", 1, "input_json_delta"),
        ("content_block_delta", 1, "input_json_delta"),
        ("content_block_stop", 1, None),
        ("content_block_start", 2, None),
        ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
        ("message_delta", None, None),
        ("message_stop", None, None),
    ]
    assert all(t == d["type"] for t, d in events)
    assert events[5][1]["content_block"] == {
        "type": "tool_use",
        "id": "call_weather1",
        "name": "get_weather",
        "input": {},
    }
    assert events[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 30, "input_tokens": 42},
    }
    assert events[0][1]["message"]["id"] == "msg_1"


def test_stream_start_is_automatic_and_finish_idempotent() -> None:
    stream = OpenAIToAnthropicStream(model="m", input_tokens=7)
    first = stream.add(oai_chunk({"content": "x"}))
    assert [t for t, _ in first] == [
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
    ]
    assert first[0][1]["message"]["usage"] == {"input_tokens": 7, "output_tokens": 0}
    assert first[0][1]["message"]["id"].startswith("msg_")
    assert stream.start() == []
    assert [t for t, _ in stream.finish()] == [
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert stream.finish() == []
    assert stream.add(oai_chunk({"content": "late"})) == []


def test_stream_empty_upstream_is_still_well_formed() -> None:
    events = OpenAIToAnthropicStream(model="m", message_id="msg_e").finish()
    assert [t for t, _ in events] == ["message_start", "ping", "message_delta", "message_stop"]
    assert events[2][1]["delta"]["stop_reason"] == "end_turn"


def test_stream_tool_name_arriving_late_is_buffered() -> None:
    events = translate(
        [
            oai_chunk(
                {"tool_calls": [{"index": 0, "id": "call_z", "function": {"arguments": '{"a"'}}]}
            ),
            oai_chunk(
                {"tool_calls": [{"index": 0, "function": {"name": "zed", "arguments": ": 1}"}}]}
            ),
            oai_chunk({}, finish_reason="tool_calls"),
        ]
    )
    acc = AnthropicStreamAccumulator()
    for event_type, data in events:
        acc.add(event_type, data)
    assert acc.result()["content"] == [
        {"type": "tool_use", "id": "call_z", "name": "zed", "input": {"a": 1}}
    ]


def test_stream_mid_stream_error_chunk() -> None:
    stream = OpenAIToAnthropicStream(model="m", message_id="msg_x")
    events = stream.add({"error": {"message": "engine died", "code": 503}})
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": "api_error", "message": "engine died"}},
    )


ROUND_TRIP_STREAMS = {
    "text": openai_text_stream,
    "tools": openai_tool_stream,
    "text_then_tools": lambda: [oai_chunk({"content": "Sure. "}), *openai_tool_stream()],
}


@pytest.mark.parametrize("name", list(ROUND_TRIP_STREAMS))
def test_translated_stream_equals_translated_final_response(name: str) -> None:
    """stream -> Anthropic events -> accumulate == accumulate -> translate, for the same chunks."""
    chunks = ROUND_TRIP_STREAMS[name]()
    message_id = "msg_" + chunks[-1]["id"]

    # Path 1: what the proxy streams to an Anthropic client, over the wire, bytewise.
    stream = OpenAIToAnthropicStream(model="claude-proxy", message_id=message_id)
    wire = b"".join(encode_anthropic_event(t, d) for t, d in stream.start())
    for chunk in chunks:
        wire += b"".join(encode_anthropic_event(t, d) for t, d in stream.add(chunk))
    wire += b"".join(encode_anthropic_event(t, d) for t, d in stream.finish())
    parser, streamed = SSEParser(), AnthropicStreamAccumulator()
    sdk_snapshot = None
    json_bufs: dict[int, bytes] = {}
    for i in range(len(wire)):
        for event in parser.feed(wire[i : i + 1]):
            data = json.loads(event.data)
            assert event.event == data["type"]
            streamed.add(event.event, data)
            sdk_snapshot = accumulate_event(
                event=data,  # type: ignore[arg-type]
                current_snapshot=sdk_snapshot,
                json_bufs=json_bufs,
            )
    assert parser.flush() == []

    # Path 2: what the proxy returns for the same turn without streaming.
    openai_acc = OpenAIStreamAccumulator()
    for chunk in chunks:
        openai_acc.add(chunk)
    direct = openai_response_to_anthropic(openai_acc.result(), model="claude-proxy")

    assert streamed.result() == direct
    assert direct["usage"]["input_tokens"] == 42
    assert sdk_snapshot is not None
    sdk = sdk_snapshot.model_dump(mode="json", exclude_none=True)
    assert sdk["content"] == direct["content"]
    assert sdk["stop_reason"] == direct["stop_reason"]
    assert sdk["usage"] == direct["usage"]
    Message.model_validate(direct)
    # And the convenience views agree across the two APIs.
    assert streamed.tool_calls == [
        {
            **c,
            "function": {
                **c["function"],
                "arguments": json.dumps(json.loads(c["function"]["arguments"])),
            },
        }
        for c in openai_acc.tool_calls
    ]
    assert streamed.text == openai_acc.text


def test_request_round_trip_back_through_response_keeps_tool_ids() -> None:
    """Tool-call ids the client got from a translated response come back intact next turn."""
    openai_acc = OpenAIStreamAccumulator()
    for chunk in openai_tool_stream():
        openai_acc.add(chunk)
    assistant = openai_response_to_anthropic(openai_acc.result())
    next_turn = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "weather and time in Paris?"},
            {"role": "assistant", "content": assistant["content"]},
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": b["id"], "content": f"result {i}"}
                    for i, b in enumerate(assistant["content"])
                ],
            },
        ],
    }
    messages = anthropic_request_to_openai(next_turn)["messages"]
    assert messages[1]["tool_calls"] == openai_acc.tool_calls
    assert [(m["role"], m.get("tool_call_id"), m["content"]) for m in messages[2:]] == [
        ("tool", "call_weather1", "result 0"),
        ("tool", "call_time2", "result 1"),
    ]


def test_stream_interleaved_tool_fragments_reach_their_own_block() -> None:
    """A server interleaving two calls' fragments: late ones go to the earlier block's index."""

    def tc(index: int, **fields: Any) -> dict[str, Any]:
        return oai_chunk({"tool_calls": [{"index": index, **fields}]})

    events = translate(
        [
            tc(0, id="c0", function={"name": "a", "arguments": '{"x": '}),
            tc(1, id="c1", function={"name": "b", "arguments": '{"y": 2}'}),
            tc(0, function={"arguments": "1}"}),
            oai_chunk({}, finish_reason="tool_calls"),
        ]
    )
    assert [(t, d.get("index")) for t, d in events if t.startswith("content_block")] == [
        ("content_block_start", 0),
        ("content_block_delta", 0),
        ("content_block_stop", 0),
        ("content_block_start", 1),
        ("content_block_delta", 1),
        ("content_block_delta", 0),
        ("content_block_stop", 1),
    ]
    ours = AnthropicStreamAccumulator()
    sdk_snapshot = None
    json_bufs: dict[int, bytes] = {}
    for event_type, data in events:
        ours.add(event_type, data)
        sdk_snapshot = accumulate_event(
            event=data,  # type: ignore[arg-type]
            current_snapshot=sdk_snapshot,
            json_bufs=json_bufs,
        )
    expected = [
        {"type": "tool_use", "id": "c0", "name": "a", "input": {"x": 1}},
        {"type": "tool_use", "id": "c1", "name": "b", "input": {"y": 2}},
    ]
    assert ours.result()["content"] == expected
    assert sdk_snapshot is not None
    assert sdk_snapshot.model_dump(mode="json", exclude_none=True)["content"] == expected
