"""Session identity rules (DESIGN.md proxy rules), as pure functions."""

from __future__ import annotations

from metaclaw.proxy.session import SessionTracker, explicit_session_id, turn_index


def test_explicit_precedence() -> None:
    body = {"prompt_cache_key": "abc-123:0", "user": "u", "metadata": {"user_id": "m"}}
    assert explicit_session_id({"x-session-id": "h"}, body) == "h"
    assert explicit_session_id({}, body) == "abc-123"
    assert explicit_session_id({}, {"user": "u"}) == "u"
    assert explicit_session_id({}, {"metadata": {"user_id": "m"}}) == "m"
    assert explicit_session_id({"x-session-id": "  "}, {"user": ""}) is None


def test_hash_chain_continues_a_conversation() -> None:
    tracker = SessionTracker()
    first = [{"role": "system", "content": "t=1"}, {"role": "user", "content": "hi"}]
    sid = tracker.resolve(None, first)
    tracker.remember(first, {"role": "assistant", "content": "hello"}, sid)
    second = [
        {"role": "system", "content": "t=2"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        {"role": "user", "content": "more"},
    ]
    assert tracker.resolve(None, second) == sid
    fresh = [{"role": "user", "content": "hi"}]
    assert tracker.resolve(None, fresh) != sid


def test_tool_arguments_compare_by_value() -> None:
    tracker = SessionTracker()
    msgs = [{"role": "user", "content": "x"}]
    reply = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "1", "type": "function", "function": {"name": "f", "arguments": '{"a":1,"b":2}'}}
        ],
    }
    tracker.remember(msgs, reply, "s1")
    again = [
        *msgs,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "1",
                    "type": "function",
                    "function": {"name": "f", "arguments": '{"b": 2, "a": 1}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "1", "content": "ok"},
    ]
    assert tracker.resolve(None, again) == "s1"


def test_cache_is_bounded() -> None:
    tracker = SessionTracker(max_size=2)
    for i in range(5):
        tracker.remember(
            [{"role": "user", "content": str(i)}], {"role": "assistant", "content": "r"}, f"s{i}"
        )
    old = [
        {"role": "user", "content": "0"},
        {"role": "assistant", "content": "r"},
        {"role": "user", "content": "n"},
    ]
    new = [
        {"role": "user", "content": "4"},
        {"role": "assistant", "content": "r"},
        {"role": "user", "content": "n"},
    ]
    assert tracker.resolve(None, old) != "s0"
    assert tracker.resolve(None, new) == "s4"


def test_turn_index_counts_assistant_replies() -> None:
    assert turn_index([{"role": "user"}]) == 0
    assert (
        turn_index(
            [
                {"role": "user"},
                {"role": "assistant"},
                {"role": "tool"},
                {"role": "assistant"},
                {"role": "user"},
            ]
        )
        == 2
    )
