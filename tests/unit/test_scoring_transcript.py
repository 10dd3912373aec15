"""Next-state assembly: each turn paired with what happened after it, in both API families."""

from __future__ import annotations

import json
from typing import Any

from metaclaw.scoring.prompt import RUBRIC, build_case
from metaclaw.scoring.transcript import TurnRecord, assemble, normalize_request


def _turn(
    i: int,
    messages: list[dict[str, Any]],
    reply: str | None = None,
    calls: list[dict[str, Any]] | None = None,
    *,
    ts: float | None = None,
    status: str = "ok",
    index: int | None = None,
    system: Any = None,
    turn_id: str | None = None,
) -> TurnRecord:
    request: dict[str, Any] = {"model": "m", "messages": messages}
    if system is not None:
        request["system"] = system
    return TurnRecord(
        turn_id=turn_id or f"t{i}",
        session_id="s",
        ts_start=100.0 + (i if ts is None else ts),
        ts_end=100.5 + (i if ts is None else ts),
        turn_index=i if index is None else index,
        request=request,
        completion_text=reply,
        tool_calls=calls,
        status=status,
    )


def _call(cid: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": cid,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(args)},
    }


def _by_id(turns: list[TurnRecord]) -> dict[str, Any]:
    return {c.turn.turn_id: c for c in assemble("s", turns).turns}


def test_multi_turn_chat_next_state_is_the_next_user_message() -> None:
    u1 = {"role": "user", "content": "capital of France?"}
    a1 = {"role": "assistant", "content": "Lyon."}
    u2 = {"role": "user", "content": "No, I meant the real capital."}
    a2 = {"role": "assistant", "content": "Paris."}
    u3 = {"role": "user", "content": "thanks"}
    sys = {"role": "system", "content": "Be brief."}
    turns = [
        _turn(2, [sys, u1, a1, u2, a2, u3], "You're welcome."),
        _turn(0, [sys, u1], "Lyon."),  # stored out of order: assembly sorts by time
        _turn(1, [sys, u1, a1, u2], "Paris."),
    ]
    ctx = _by_id(turns)
    assert [m.text for m in ctx["t0"].next_state] == ["No, I meant the real capital."]
    assert ctx["t0"].next_turn_id == "t1" and ctx["t0"].next_user_text.startswith("No, I meant")
    assert [m.text for m in ctx["t1"].next_state] == ["thanks"]
    assert ctx["t2"].next_state is None and ctx["t2"].is_last
    assert not ctx["t0"].is_last and ctx["t0"].system == "Be brief."
    assert ctx["t1"].last_user_text == "No, I meant the real capital."


def test_tool_call_session_openai_shape() -> None:
    u = {"role": "user", "content": "weather in Oslo?"}
    call = _call("c1", "get_weather", {"city": "Oslo"})
    a1 = {"role": "assistant", "content": None, "tool_calls": [call]}
    tool = {"role": "tool", "tool_call_id": "c1", "content": "Error: city not found"}
    a2 = {"role": "assistant", "content": "Sorry, I could not find it."}
    u2 = {"role": "user", "content": "try again"}
    turns = [
        _turn(0, [u], None, [call]),
        # the client re-serialises the arguments with other spacing: still the same turn
        _turn(
            1,
            [
                u,
                {
                    **a1,
                    "tool_calls": [
                        _call("c1", "get_weather", {"city": "Oslo"})
                        | {"function": {"name": "get_weather", "arguments": '{ "city" :  "Oslo" }'}}
                    ],
                },
                tool,
            ],
            "Sorry, I could not find it.",
        ),
        _turn(2, [u, a1, tool, a2, u2], "It is 3°C in Oslo."),
    ]
    ctx = _by_id(turns)
    state = ctx["t0"].next_state
    assert [(m.role, m.text, m.tool_call_id) for m in state] == [
        ("tool", "Error: city not found", "c1")
    ]
    assert ctx["t0"].reply.tool_calls[0].name == "get_weather"
    assert ctx["t0"].next_user_text is None and len(ctx["t0"].next_tool_results) == 1
    assert [m.text for m in ctx["t1"].next_state] == ["try again"]


def test_anthropic_tool_use_and_tool_result_blocks() -> None:
    u = {"role": "user", "content": [{"type": "text", "text": "list files"}]}
    a1 = {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "hmm"},
            {"type": "text", "text": "Listing."},
            {"type": "tool_use", "id": "tu1", "name": "ls", "input": {"path": "."}},
        ],
    }
    res = {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "tu1",
                "is_error": True,
                "content": [{"type": "text", "text": "permission denied"}],
            },
            {"type": "text", "text": "hmm, that failed"},
        ],
    }
    turns = [
        _turn(0, [u], "Listing.", [_call("tu1", "ls", {"path": "."})], system="You code."),
        _turn(1, [u, a1, res], "Let me try sudo.", system=[{"type": "text", "text": "You code."}]),
    ]
    ctx = _by_id(turns)
    state = ctx["t0"].next_state
    assert [(m.role, m.text, m.is_error) for m in state] == [
        ("tool", "permission denied", True),
        ("user", "hmm, that failed", False),
    ]
    assert ctx["t0"].system == "You code." and ctx["t1"].system == "You code."


def test_retry_with_same_index_and_branches_take_the_earliest_continuation() -> None:
    u1 = {"role": "user", "content": "write a haiku"}
    turns = [
        _turn(0, [u1], None, status="upstream_error", turn_id="err"),
        _turn(0, [u1], "Old pond / frog", ts=1, index=0, turn_id="ok"),
        _turn(
            1,
            [
                u1,
                {"role": "assistant", "content": "Old pond / frog"},
                {"role": "user", "content": "shorter"},
            ],
            "Pond. Frog.",
            ts=2,
            turn_id="b1",
        ),
        _turn(
            1,
            [
                u1,
                {"role": "assistant", "content": "Old pond / frog"},
                {"role": "user", "content": "longer"},
            ],
            "A long one",
            ts=3,
            turn_id="b2",
        ),
    ]
    ctx = _by_id(turns)
    assert ctx["err"].next_state is None
    assert ctx["ok"].next_turn_id == "b1" and ctx["ok"].next_user_text == "shorter"


def test_whitespace_reserialisation_still_chains() -> None:
    u1 = {"role": "user", "content": "hi"}
    turns = [
        _turn(0, [u1], "Hello!\n\nHow can I help?  "),
        _turn(
            1,
            [
                u1,
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "Hello! How can I help?"}],
                },
                {"role": "user", "content": "tell a joke"},
            ],
            "No.",
        ),
    ]
    assert _by_id(turns)["t0"].next_user_text == "tell a joke"


def test_positional_fallback_when_the_client_rewrites_the_reply() -> None:
    u1 = {"role": "user", "content": "summarise"}
    turns = [
        _turn(0, [u1], "A long summary with <thinking>private</thinking> bits"),
        _turn(
            1,
            [
                u1,
                {"role": "assistant", "content": "A long summary with bits"},
                {"role": "user", "content": "great, now translate it"},
            ],
            "Traduction",
        ),
    ]
    ctx = _by_id(turns)
    assert ctx["t0"].next_user_text == "great, now translate it"


def test_unrelated_later_turn_is_not_a_continuation() -> None:
    turns = [
        _turn(0, [{"role": "user", "content": "a"}], "A"),
        _turn(
            1,
            [
                {"role": "user", "content": "b"},
                {"role": "assistant", "content": "B"},
                {"role": "user", "content": "c"},
            ],
            "C",
            index=2,
        ),
    ]
    assert _by_id(turns)["t0"].next_state is None


def test_normalize_request_handles_both_families_and_junk() -> None:
    assert normalize_request(None) == [] and normalize_request("not json") == []
    msgs = normalize_request(
        json.dumps(
            {
                "messages": [
                    {"role": "developer", "content": "rules"},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "see"},
                            {"type": "image_url", "image_url": {"url": "x"}},
                        ],
                    },
                    "garbage",
                    {"role": "function", "content": "legacy result"},
                ]
            }
        )
    )
    assert [(m.role, m.text) for m in msgs] == [
        ("system", "rules"),
        ("user", "see[image]"),
        ("tool", "legacy result"),
    ]


def test_judge_case_shows_context_reply_and_next_state() -> None:
    u1 = {"role": "user", "content": "capital of France?"}
    turns = [
        _turn(0, [{"role": "system", "content": "Be brief."}, u1], "Lyon."),
        _turn(
            1,
            [
                u1,
                {"role": "assistant", "content": "Lyon."},
                {"role": "user", "content": "No, that's wrong."},
            ],
            "Paris.",
        ),
    ]
    session = assemble("s", turns)
    first, last = (build_case(c) for c in session.turns)
    assert first.messages[0] == {"role": "system", "content": RUBRIC}
    body = first.messages[1]["content"]
    assert "Be brief." in body and "capital of France?" in body
    review = body.index("## Assistant turn under review")
    after = body.index("## What happened next")
    assert review < body.index("Lyon.", review) < after < body.index("No, that's wrong.")
    assert first.next_state == "user"
    assert "the session ended after this turn" in last.messages[1]["content"]
    assert last.next_state == "none"
