"""Pure parts of the policy server: sampling maths, text release, tool calls, request checks."""

from __future__ import annotations

import math

import pytest
import torch

from metaclaw.serving.chat import ChatFormatError, normalise_messages
from metaclaw.serving.engine import EngineError
from metaclaw.serving.openai_params import parse_chat, parse_completion
from metaclaw.serving.sampling import (
    SamplingParams,
    TextTracker,
    choose,
    parse_tool_calls,
    sampling_logprobs,
    split_tool_calls,
)

torch.set_num_threads(1)


def test_sampling_logprobs_temperature_and_nucleus_by_hand() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    assert torch.allclose(sampling_logprobs(logits, 1.0, 1.0), logits, atol=1e-6)
    # T = 0.5 squares the probabilities before renormalising: .25, .09, .04 over .38
    tempered = sampling_logprobs(logits, 0.5, 1.0).exp()
    assert torch.allclose(tempered, torch.tensor([0.25, 0.09, 0.04]) / 0.38, atol=1e-6)
    # top_p 0.6 keeps .5 and .3 (mass above .3 is .5 < .6), renormalised to .625/.375
    nucleus = sampling_logprobs(logits, 1.0, 0.6)
    assert torch.allclose(nucleus[:2].exp(), torch.tensor([0.625, 0.375]), atol=1e-6)
    assert nucleus[2] == float("-inf")
    # greedy reports the untempered distribution
    assert torch.allclose(sampling_logprobs(logits, 0.0, 0.5), logits, atol=1e-6)


def test_choose_greedy_seeded_and_top_alternatives() -> None:
    logits = torch.tensor([0.0, 3.0, 1.0, -1.0])
    token, lp, top = choose(
        logits, SamplingParams(max_tokens=1, temperature=0.0, top_logprobs=2), None
    )
    assert token == 1
    assert lp == pytest.approx(float(torch.log_softmax(logits, -1)[1]))
    assert [t for t, _ in top] == [1, 2]
    params = SamplingParams(max_tokens=1, temperature=1.0, top_p=0.8, top_logprobs=4)
    draws = [choose(logits, params, torch.Generator().manual_seed(7))[0] for _ in range(3)]
    assert len(set(draws)) == 1  # same seed, same draw
    _, _, top = choose(logits, params, torch.Generator().manual_seed(0))
    assert len(top) < 4 and all(math.isfinite(v) for _, v in top)  # nucleus drops the tail


CHARS = {i: c for i, c in enumerate("abc<>/_ lotsXY")}
CHARS[99] = "\ufffd"


def _decode(ids: list[int]) -> str:
    text = "".join(CHARS[i] for i in ids)
    return text.replace("\ufffdX", "é")  # 99 then 12 is one two-byte character


def _ids(text: str) -> list[int]:
    rev = {c: i for i, c in CHARS.items()}
    return [rev[c] for c in text]


def test_text_tracker_holds_back_stop_prefix_and_cuts_at_stop() -> None:
    tracker = TextTracker(_decode, stop=("XY",))
    released = [tracker.push(i) for i in _ids("abX")]
    assert released == ["a", "b", ""]  # "X" may start the stop string
    assert tracker.push(_ids("Y")[0]) == ""
    assert tracker.stopped_by == "XY"
    assert tracker.text == "ab"
    tracker = TextTracker(_decode, stop=("XY",))
    out = "".join(tracker.push(i) for i in _ids("aXb"))
    assert out + tracker.flush() == "aXb" and tracker.stopped_by is None


def test_text_tracker_holds_back_incomplete_characters() -> None:
    tracker = TextTracker(_decode)
    assert tracker.push(0) == "a"
    assert tracker.push(99) == ""  # an incomplete UTF-8 sequence
    assert tracker.push(12) == "é"


def test_text_tracker_keeps_tool_calls_out_of_released_text() -> None:
    tracker = TextTracker(lambda ids: "".join(ids_text[i] for i in ids), detect_tools=True)
    ids_text = ["ok ", "<tool", "_call>", '{"name": "f", "arguments": {"x": 1}}', "</tool_call>"]
    released = [tracker.push(i) for i in range(len(ids_text))]
    assert "".join(released) + tracker.flush() == "ok "
    text, calls = split_tool_calls(tracker.text)
    assert text == "ok"
    assert calls == [{"type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]


def test_tool_call_parsing_ignores_broken_blocks() -> None:
    assert parse_tool_calls("<tool_call>not json</tool_call>") == []
    assert parse_tool_calls('<tool_call>{"arguments": {}}</tool_call>') == []
    text, calls = split_tool_calls('a <tool_call>{"name": "g", "arguments": "{}"}</tool_call>')
    assert text == "a" and calls[0]["function"] == {"name": "g", "arguments": "{}"}


def test_normalise_messages_for_a_template_without_tools() -> None:
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {}}}]
    messages = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "read "}, {"type": "text", "text": "it"}],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "c1",
                    "type": "function",
                    "function": {"name": "read_file", "arguments": '{"p": "x"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "data"},
    ]
    out = normalise_messages(messages, "{{ messages }}", tools)
    assert out[0]["role"] == "system" and '"read_file"' in out[0]["content"]
    assert out[1] == {"role": "user", "content": "read it"}
    assert out[2]["content"] == (
        '<tool_call>\n{"name": "read_file", "arguments": {"p": "x"}}\n</tool_call>'
    )
    assert out[3] == {"role": "tool", "content": "data", "tool_call_id": "c1"}
    with pytest.raises(ChatFormatError, match="image_url"):
        normalise_messages([{"role": "user", "content": [{"type": "image_url"}]}], "", None)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"n": 2}, "n"),
        ({"temperature": 3}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"stream": "yes"}, "stream"),
    ],
)
def test_parse_chat_rejects_with_the_field_named(body: dict, param: str) -> None:
    with pytest.raises(EngineError) as info:
        parse_chat({"messages": [{"role": "user", "content": "hi"}], **body}, 64)
    assert info.value.status == 400 and info.value.param == param
    assert param in info.value.message


def test_parse_chat_defaults_and_limits() -> None:
    chat = parse_chat(
        {
            "messages": [{"role": "user", "content": "hi"}],
            "stop": "\n",
            "logprobs": True,
            "top_logprobs": 2,
            "max_completion_tokens": 9,
            "tools": [{"type": "function"}],
            "tool_choice": "auto",
        },
        64,
    )
    assert chat.params.max_tokens == 9 and chat.params.stop == ("\n",)
    assert chat.params.top_logprobs == 2 and chat.params.detect_tools
    assert parse_chat({"messages": [{"role": "user", "content": "x"}]}, 64).params.max_tokens == 64
    none = parse_chat(
        {"messages": [{"role": "user", "content": "x"}], "tools": [{}], "tool_choice": "none"}, 64
    )
    assert none.tools is None and not none.params.detect_tools


def test_parse_completion_prompts_and_echo_rules() -> None:
    comp = parse_completion({"prompt": [1, 2, 3], "max_tokens": 0, "echo": True, "logprobs": 0})
    assert comp.prompt == [1, 2, 3] and comp.params.prompt_logprobs
    assert parse_completion({"prompt": ["hi"]}).params.max_tokens == 16
    for body, fragment in [
        ({"prompt": "x", "max_tokens": 0}, "echo"),
        ({"prompt": ["a", "b"]}, "several prompts"),
        ({"prompt": [1, "a"]}, "token ids"),
        ({"prompt": ""}, "empty"),
    ]:
        with pytest.raises(EngineError, match=fragment):
            parse_completion(body)
