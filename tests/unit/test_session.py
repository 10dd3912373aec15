"""Session identity rules (docs/architecture.md, "Proxy rules"), as pure functions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from metaclaw.proxy.anthropic_compat import anthropic_request_to_openai
from metaclaw.proxy.completion import from_anthropic
from metaclaw.proxy.session import (
    SessionTracker,
    client_identity,
    explicit_session_id,
    turn_index,
)


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


def test_the_system_prompt_and_the_client_keep_agents_apart() -> None:
    """Issue 16 item 5: two agents that open with "hi" and get the same reply used to share one
    session. The system prompt (digits aside) and the presented key now seed the chain."""
    tracker = SessionTracker()
    reply = {"role": "assistant", "content": "hello"}

    def opening(system: str) -> list[dict]:
        return [{"role": "system", "content": system}, {"role": "user", "content": "hi"}]

    def follow_up(system: str) -> list[dict]:
        return [*opening(system), reply, {"role": "user", "content": "next"}]

    coder = tracker.resolve(None, opening("You write code."), "key-a")
    tracker.remember(opening("You write code."), reply, coder, "key-a")
    writer = tracker.resolve(None, opening("You write poems."), "key-a")
    tracker.remember(opening("You write poems."), reply, writer, "key-a")
    assert coder != writer
    assert tracker.resolve(None, follow_up("You write code."), "key-a") == coder
    assert tracker.resolve(None, follow_up("You write poems."), "key-a") == writer
    assert tracker.resolve(None, follow_up("You write code."), "key-b") not in (coder, writer)


def test_a_presented_key_is_the_identity_and_never_stored_in_clear() -> None:
    by_bearer = client_identity({"authorization": "Bearer sk-123"})
    assert by_bearer == client_identity({"x-api-key": "sk-123"}) and "sk-123" not in by_bearer
    assert client_identity({}) == "" and client_identity({"x-api-key": "other"}) != by_bearer


def test_an_anthropic_reply_of_several_text_blocks_chains() -> None:
    """Recorded from the reply, then re-sent by the client as blocks: the same conversation."""
    tracker = SessionTracker()
    first = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}
    history = anthropic_request_to_openai(first, None)["messages"]
    blocks = [{"type": "text", "text": "Hello."}, {"type": "text", "text": "How can I help?"}]
    reply = from_anthropic({"content": blocks, "stop_reason": "end_turn"}).reply_message()
    sid = tracker.resolve(None, history)
    tracker.remember(history, reply, sid)
    again = {
        **first,
        "messages": [
            *first["messages"],
            {"role": "assistant", "content": blocks},
            {"role": "user", "content": "more"},
        ],
    }
    assert tracker.resolve(None, anthropic_request_to_openai(again, None)["messages"]) == sid


def test_the_chain_outlives_the_process_and_is_shared(tmp_path: Path) -> None:
    """Two trackers on one SQLite file: a restarted proxy, or a second proxy process."""
    first = [{"role": "user", "content": "hi"}]
    reply = {"role": "assistant", "content": "hello"}
    before = SessionTracker(path=tmp_path / "sessions.sqlite")
    sid = before.resolve(None, first, "k")
    linked = before.remember(first, reply, sid, "k")
    if linked is not None:  # queued because the file was busy: in it once this resolves
        linked.result(5)
    other = SessionTracker(path=tmp_path / "sessions.sqlite")  # opened while `before` runs
    assert other.resolve(None, [*first, reply, {"role": "user", "content": "more"}], "k") == sid
    before.close()
    other.close()
    restarted = SessionTracker(path=tmp_path / "sessions.sqlite")
    assert restarted.resolve(None, [*first, reply, {"role": "user", "content": "?"}], "k") == sid
    assert restarted.resolve(None, [*first, reply, {"role": "user", "content": "?"}], "j") != sid
    restarted.close()


def test_the_stored_chain_is_trimmed_to_its_size(tmp_path: Path) -> None:
    tracker = SessionTracker(max_size=10, path=tmp_path / "sessions.sqlite")
    for i in range(2100):  # two trims
        tracker.remember(
            [{"role": "user", "content": str(i)}], {"role": "assistant", "content": "r"}, f"s{i}"
        )
    tracker.close()
    with sqlite3.connect(tmp_path / "sessions.sqlite") as db:
        assert db.execute("SELECT count(*) FROM chain").fetchone()[0] <= 10 + 2100 - 2048
