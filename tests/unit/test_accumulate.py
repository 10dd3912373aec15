"""Stream accumulators: rebuild final OpenAI / Anthropic responses from streamed pieces.

The official SDKs' own stream accumulators are used as independent oracles where they exist.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from metaclaw.proxy.accumulate import AnthropicStreamAccumulator, OpenAIStreamAccumulator
from metaclaw.proxy.sse import SSEParser

# --------------------------------------------------------------------------------------------
# Fixtures: hand-written streams shaped like what the real APIs send.
# --------------------------------------------------------------------------------------------

_BASE = {
    "id": "chatcmpl-AbC123",
    "object": "chat.completion.chunk",
    "created": 1732500000,
    "model": "gpt-4o-mini-2024-07-18",
    "system_fingerprint": "fp_0ba0d124f1",
}


def oai_chunk(
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    index: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    choice = {
        "index": index,
        "delta": delta or {},
        "logprobs": None,
        "finish_reason": finish_reason,
    }
    return {**_BASE, "choices": [choice], **extra}


USAGE = {
    "prompt_tokens": 42,
    "completion_tokens": 9,
    "total_tokens": 51,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


def openai_text_stream() -> list[dict[str, Any]]:
    """``stream_options.include_usage``: usage arrives in a final ``choices: []`` chunk."""
    return [
        oai_chunk({"role": "assistant", "content": "", "refusal": None}),
        oai_chunk({"content": "Hello"}),
        oai_chunk({"content": ", wor"}),
        oai_chunk({"content": "ld!"}),
        oai_chunk({}, finish_reason="stop"),
        {**_BASE, "choices": [], "usage": USAGE},
    ]


def openai_tool_stream() -> list[dict[str, Any]]:
    """Two parallel tool calls with fragmented arguments, as gpt-4o streams them."""

    def tc(index: int, **fields: Any) -> dict[str, Any]:
        return {"tool_calls": [{"index": index, **fields}]}

    return [
        oai_chunk({"role": "assistant", "content": None, "refusal": None}),
        oai_chunk(
            tc(
                0,
                id="call_weather1",
                type="function",
                function={"name": "get_weather", "arguments": ""},
            )
        ),
        oai_chunk(tc(0, function={"arguments": '{"ci'})),
        oai_chunk(tc(0, function={"arguments": 'ty": "Par'})),
        oai_chunk(tc(0, function={"arguments": 'is"}'})),
        oai_chunk(
            tc(1, id="call_time2", type="function", function={"name": "get_time", "arguments": ""})
        ),
        oai_chunk(tc(1, function={"arguments": '{"tz": "Europe/Paris"}'})),
        oai_chunk({}, finish_reason="tool_calls"),
        {**_BASE, "choices": [], "usage": {**USAGE, "completion_tokens": 30, "total_tokens": 72}},
    ]


def anthropic_stream() -> list[tuple[str, dict[str, Any]]]:
    """Text then a tool_use block, as the Messages API streams it (SSE event, data)."""
    return [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
                    "type": "message",
                    "role": "assistant",
                    "model": "claude-sonnet-4-5-20250929",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {
                        "input_tokens": 472,
                        "cache_creation_input_tokens": 0,
                        "cache_read_input_tokens": 0,
                        "output_tokens": 2,
                    },
                },
            },
        ),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        ("ping", {"type": "ping"}),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "Okay"},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": ", let me check the weather."},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                    "name": "get_weather",
                    "input": {},
                },
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": ""},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": '{"location": "San Fra'},
            },
        ),
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": 'ncisco, CA", "unit": "c"}'},
            },
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 89},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


# --------------------------------------------------------------------------------------------
# OpenAI
# --------------------------------------------------------------------------------------------


def feed_openai(chunks: list[dict[str, Any]]) -> OpenAIStreamAccumulator:
    acc = OpenAIStreamAccumulator()
    for chunk in chunks:
        acc.add(chunk)
    return acc


def sdk_openai_final(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for chunk in chunks:
        list(state.handle_chunk(ChatCompletionChunk.model_validate(chunk)))
    return state.get_final_completion().model_dump(mode="json", exclude_none=True)


def test_openai_text_stream_result() -> None:
    acc = feed_openai(openai_text_stream())
    assert acc.result() == {
        "id": "chatcmpl-AbC123",
        "object": "chat.completion",
        "created": 1732500000,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello, world!"},
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
        "system_fingerprint": "fp_0ba0d124f1",
    }
    assert acc.text == "Hello, world!"
    assert acc.tool_calls == []
    assert acc.finish_reason == "stop"
    assert acc.usage == USAGE
    assert acc.model == "gpt-4o-mini-2024-07-18"
    ChatCompletion.model_validate(acc.result())


def test_openai_tool_stream_result() -> None:
    acc = feed_openai(openai_tool_stream())
    expected_calls = [
        {
            "id": "call_weather1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {
            "id": "call_time2",
            "type": "function",
            "function": {"name": "get_time", "arguments": '{"tz": "Europe/Paris"}'},
        },
    ]
    assert acc.tool_calls == expected_calls
    result = acc.result()
    assert result["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": None, "tool_calls": expected_calls},
            "finish_reason": "tool_calls",
        }
    ]
    assert result["usage"]["completion_tokens"] == 30
    assert acc.text == ""
    assert acc.finish_reason == "tool_calls"
    ChatCompletion.model_validate(result)


@pytest.mark.parametrize("stream", [openai_text_stream, openai_tool_stream])
def test_openai_matches_official_sdk_accumulator(stream: Any) -> None:
    chunks = stream()
    ours = feed_openai(chunks).result()
    sdk = sdk_openai_final(chunks)
    ours_msg, sdk_msg = ours["choices"][0]["message"], sdk["choices"][0]["message"]
    assert ours_msg["content"] == sdk_msg.get("content")
    sdk_calls = [
        {"id": c["id"], "type": c["type"], "function": dict(c["function"])}
        for c in sdk_msg.get("tool_calls") or []
    ]
    for call in sdk_calls:
        call["function"].pop("parsed_arguments", None)
    assert ours_msg.get("tool_calls", []) == sdk_calls
    assert ours["choices"][0]["finish_reason"] == sdk["choices"][0]["finish_reason"]
    assert ours["usage"] == sdk["usage"]
    assert ours["id"] == sdk["id"] and ours["model"] == sdk["model"]


def test_openai_first_content_seen_ignores_role_only_chunk() -> None:
    text = openai_text_stream()
    acc = OpenAIStreamAccumulator()
    acc.add(text[0])  # role + empty content: no token yet
    assert acc.first_content_seen is False
    acc.add(text[1])
    assert acc.first_content_seen is True

    tools = openai_tool_stream()
    acc = OpenAIStreamAccumulator()
    acc.add(tools[0])
    assert acc.first_content_seen is False
    acc.add(tools[1])  # the first tool-call delta counts
    assert acc.first_content_seen is True


def test_openai_multiple_choices() -> None:
    acc = feed_openai(
        [
            oai_chunk({"role": "assistant", "content": ""}, index=0),
            oai_chunk({"role": "assistant", "content": ""}, index=1),
            oai_chunk({"content": "second"}, index=1),
            oai_chunk({"content": "first"}, index=0),
            oai_chunk({}, finish_reason="length", index=1),
            oai_chunk({}, finish_reason="stop", index=0),
        ]
    )
    assert acc.text == "first"
    assert acc.finish_reason == "stop"
    choices = acc.result()["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "first", "stop"),
        (1, "second", "length"),
    ]


def test_openai_refusal_and_logprobs() -> None:
    lp = {"token": "I", "logprob": -0.1, "bytes": [73], "top_logprobs": []}
    acc = feed_openai(
        [
            oai_chunk({"role": "assistant", "content": None, "refusal": ""}),
            {**oai_chunk({"refusal": "I can't "}), "choices": []},  # usage-only shape, ignored
            oai_chunk({"refusal": "help with that."}),
            {
                **_BASE,
                "choices": [
                    {"index": 0, "delta": {}, "logprobs": {"refusal": [lp]}, "finish_reason": None}
                ],
            },
            oai_chunk({}, finish_reason="stop"),
        ]
    )
    assert acc.first_content_seen is True
    choice = acc.result()["choices"][0]
    assert choice["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": "help with that.",
    }
    assert choice["logprobs"] == {"refusal": [lp]}


def test_openai_tolerates_missing_fields_and_missing_tool_index() -> None:
    acc = feed_openai(
        [
            {"choices": [{"delta": {"content": "a"}}]},  # no id/model/index
            {"choices": [{"delta": {"tool_calls": [{"id": "c1", "function": {"name": "f"}}]}}]},
            {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": '{"x":'}}]}}]},
            {"choices": [{"delta": {"tool_calls": [{"function": {"arguments": "1}"}}]}}]},
            {"choices": [{"delta": {"tool_calls": [{"id": "c2", "function": {"name": "g"}}]}}]},
            {"choices": [{"delta": None, "finish_reason": "tool_calls"}]},
            {"choices": "garbage"},
        ]
    )
    result = acc.result()
    assert (result["id"], result["model"], result["created"], result["usage"]) == ("", "", 0, None)
    assert acc.model is None and acc.usage is None
    assert acc.tool_calls == [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}},
    ]
    assert result["choices"][0]["message"]["content"] == "a"


def test_openai_repeated_name_and_id_are_not_duplicated() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "search"}}
    acc = feed_openai(
        [
            oai_chunk({"tool_calls": [{**call, "function": {"name": "search", "arguments": "{"}}]}),
            oai_chunk({"tool_calls": [{**call, "function": {"name": "search", "arguments": "}"}}]}),
        ]
    )
    assert acc.tool_calls == [
        {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}
    ]


def test_openai_empty_stream_still_has_choice_zero() -> None:
    result = OpenAIStreamAccumulator().result()
    assert result["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": None}, "finish_reason": None}
    ]


def test_openai_reasoning_content_is_kept() -> None:
    acc = feed_openai(
        [
            oai_chunk({"role": "assistant", "content": ""}),
            oai_chunk({"reasoning_content": "think"}),
            oai_chunk({"reasoning_content": "ing"}),
            oai_chunk({"content": "answer"}, finish_reason="stop"),
        ]
    )
    assert acc.result()["choices"][0]["message"] == {
        "role": "assistant",
        "content": "answer",
        "reasoning_content": "thinking",
    }


def test_openai_from_sse_bytes_split_every_byte() -> None:
    """SSEParser and the accumulator together, the way the proxy's stream path uses them."""
    wire = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in openai_tool_stream())
    wire += b"data: [DONE]\n\n"
    parser, acc = SSEParser(), OpenAIStreamAccumulator()
    for i in range(len(wire)):
        for event in parser.feed(wire[i : i + 1]):
            if event.data != "[DONE]":
                acc.add(json.loads(event.data))
    assert acc.result() == feed_openai(openai_tool_stream()).result()


# --------------------------------------------------------------------------------------------
# Anthropic
# --------------------------------------------------------------------------------------------


def feed_anthropic(events: list[tuple[str, dict[str, Any]]]) -> AnthropicStreamAccumulator:
    acc = AnthropicStreamAccumulator()
    for event_type, data in events:
        acc.add(event_type, data)
    return acc


def sdk_anthropic_final(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for _, data in events:
        snapshot = accumulate_event(
            event=data,  # type: ignore[arg-type]
            current_snapshot=snapshot,
            json_bufs=json_bufs,
        )
    assert snapshot is not None
    return snapshot.model_dump(mode="json", exclude_none=True)


EXPECTED_ANTHROPIC = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "text", "text": "Okay, let me check the weather."},
        {
            "type": "tool_use",
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA", "unit": "c"},
        },
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 472,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 89,
    },
}


def test_anthropic_stream_result() -> None:
    acc = feed_anthropic(anthropic_stream())
    assert acc.result() == EXPECTED_ANTHROPIC
    assert acc.text == "Okay, let me check the weather."
    assert acc.tool_calls == [
        {
            "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "type": "function",
            "function": {
                "name": "get_weather",
                "arguments": '{"location": "San Francisco, CA", "unit": "c"}',
            },
        }
    ]
    assert acc.finish_reason == "tool_use"
    assert acc.usage is not None and acc.usage["output_tokens"] == 89
    assert acc.model == "claude-sonnet-4-5-20250929"
    Message.model_validate(acc.result())


def test_anthropic_matches_official_sdk_accumulator() -> None:
    ours = feed_anthropic(anthropic_stream()).result()
    sdk = sdk_anthropic_final(anthropic_stream())
    assert ours["content"] == sdk["content"]
    assert ours["usage"] == sdk["usage"]
    assert (ours["stop_reason"], ours["id"], ours["model"]) == (
        sdk["stop_reason"],
        sdk["id"],
        sdk["model"],
    )


def test_anthropic_first_content_seen() -> None:
    events = anthropic_stream()
    acc = AnthropicStreamAccumulator()
    for event_type, data in events[:3]:  # message_start, empty text block start, ping
        acc.add(event_type, data)
    assert acc.first_content_seen is False
    acc.add(*events[3])
    assert acc.first_content_seen is True


def _tool_events(index: int, fragments: list[str], stop: bool = True) -> list[tuple[str, dict]]:
    start = {
        "type": "content_block_start",
        "index": index,
        "content_block": {"type": "tool_use", "id": f"toolu_{index}", "name": "t", "input": {}},
    }
    events: list[tuple[str, dict]] = [("content_block_start", start)]
    for fragment in fragments:
        delta = {"type": "input_json_delta", "partial_json": fragment}
        events.append(
            ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        )
    if stop:
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
    return events


def test_anthropic_tool_input_edge_cases() -> None:
    acc = feed_anthropic(
        _tool_events(0, [])  # no arguments at all
        + _tool_events(1, [""])  # only an empty fragment
        + _tool_events(2, ['{"a": ', "tru"])  # invalid JSON: kept verbatim
        + _tool_events(3, ['{"b": [1, ', "2]}"], stop=False)  # stream cut before the stop
    )
    inputs = [block["input"] for block in acc.result()["content"]]
    assert inputs == [{}, {}, '{"a": tru', {"b": [1, 2]}]
    assert [c["function"]["arguments"] for c in acc.tool_calls] == [
        "{}",
        "",
        '{"a": tru',
        '{"b": [1, 2]}',
    ]


def test_anthropic_thinking_signature_and_stop_sequence() -> None:
    acc = feed_anthropic(
        [
            (
                "message_start",
                {"message": {"id": "msg_t", "model": "m", "usage": {"input_tokens": 5}}},
            ),
            (
                "content_block_start",
                {
                    "index": 0,
                    "content_block": {"type": "thinking", "thinking": "", "signature": ""},
                },
            ),
            (
                "content_block_delta",
                {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Hm"}},
            ),
            (
                "content_block_delta",
                {"index": 0, "delta": {"type": "thinking_delta", "thinking": "m."}},
            ),
            (
                "content_block_delta",
                {"index": 0, "delta": {"type": "signature_delta", "signature": "EqQ"}},
            ),
            ("content_block_stop", {"index": 0}),
            ("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}}),
            ("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "4"}}),
            (
                "message_delta",
                {
                    "delta": {"stop_reason": "stop_sequence", "stop_sequence": "###"},
                    "usage": {"output_tokens": 12, "input_tokens": None},
                },
            ),
        ]
    )
    result = acc.result()
    assert result["content"] == [
        {"type": "thinking", "thinking": "Hmm.", "signature": "EqQ"},
        {"type": "text", "text": "4"},
    ]
    assert (result["stop_reason"], result["stop_sequence"]) == ("stop_sequence", "###")
    assert result["usage"] == {"input_tokens": 5, "output_tokens": 12}  # None does not clobber
    assert acc.text == "4"
    assert acc.first_content_seen is True
    Message.model_validate(result)


def test_anthropic_error_event_and_empty_result() -> None:
    acc = AnthropicStreamAccumulator()
    assert acc.result()["usage"] == {"input_tokens": 0, "output_tokens": 0}
    acc.add("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Busy"}})
    assert acc.error == {"type": "overloaded_error", "message": "Busy"}
    assert acc.result()["content"] == []


def test_anthropic_from_sse_bytes_split_every_byte() -> None:
    wire = b"".join(
        b"event: " + t.encode() + b"\ndata: " + json.dumps(d).encode() + b"\n\n"
        for t, d in anthropic_stream()
    )
    parser, acc = SSEParser(), AnthropicStreamAccumulator()
    for i in range(len(wire)):
        for event in parser.feed(wire[i : i + 1]):
            acc.add(event.event or "", json.loads(event.data))
    assert acc.result() == EXPECTED_ANTHROPIC
