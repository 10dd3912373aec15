"""Implicit detectors on positive and negative examples (precision first)."""

from __future__ import annotations

from typing import Any

import pytest

from metaclaw.scoring.implicit import (
    detect,
    detect_abandonment,
    detect_continuation,
    detect_correction,
    detect_re_ask,
    detect_tool_error,
    detect_upstream_error,
)
from metaclaw.scoring.transcript import Msg, ToolCall, TurnContext, TurnRecord, assemble


def _ctx(
    next_user: str | None = None,
    *,
    prompt: str = "Summarise the report in three bullets",
    reply: str = "Here are three bullets.",
    calls: tuple[ToolCall, ...] = (),
    tools: list[Msg] | None = None,
    status: str = "ok",
    finish: str | None = "stop",
    is_last: bool = False,
    http_status: int | None = None,
    error: str | None = None,
) -> TurnContext:
    state: list[Msg] | None = None
    if next_user is not None or tools:
        state = list(tools or []) + ([Msg("user", next_user)] if next_user is not None else [])
    turn = TurnRecord("t", "s", 1.0, 2.0, 0, None, reply, None, finish, status, http_status, error)
    return TurnContext(
        turn=turn,
        messages=[Msg("user", prompt)],
        reply=Msg("assistant", reply, calls),
        next_state=state,
        is_last=is_last,
    )


@pytest.mark.parametrize(
    "text",
    [
        "No, I meant the other file.",
        "no. use python 3.11",
        "Nope — that's the old API",
        "That's wrong, the capital is Paris",
        "this is incorrect",
        "Not what I asked for.",
        "I meant the second column",
        "You misunderstood me",
        "It still doesn't work",
        "that didn't work",
        "Wrong file.",
        "you forgot the tests",
    ],
)
def test_correction_positive(text: str) -> None:
    signal = detect_correction(_ctx(text))
    assert signal is not None and signal.value == -1.0 and signal.kind == "correction"
    assert text.split()[0] in signal.reason  # the evidence quotes the user


@pytest.mark.parametrize(
    "text",
    [
        "No problem, thanks!",
        "no worries",
        "No, thanks, that's all",
        "Now do the same for Berlin",
        "Great, that works",
        "Nothing else.",
        "Notes look good",
        "I know that's hard, but could you also add tests?",
    ],
)
def test_correction_negative(text: str) -> None:
    assert detect_correction(_ctx(text)) is None


def test_bare_no_answering_a_question_is_not_a_correction() -> None:
    ctx = _ctx("No, just the code please.", reply="Should I also add tests?")
    assert detect_correction(ctx) is None
    # ...but an explicit correction still counts after a question
    assert detect_correction(_ctx("That's wrong.", reply="Is this what you wanted?")) is not None


def test_no_next_state_no_signal() -> None:
    ctx = _ctx(None)
    assert detect_correction(ctx) is None and detect_re_ask(ctx) is None
    assert detect_continuation(ctx) is None


def test_re_ask_positive() -> None:
    signal = detect_re_ask(_ctx("Please summarise the report in three bullets!"))
    assert signal is not None and signal.details["similarity"] >= 0.75
    assert signal.value == -1.0
    assert detect_re_ask(_ctx("Try again")) is not None
    assert detect_re_ask(_ctx("could you do it again?")) is not None


@pytest.mark.parametrize(
    "text",
    [
        "Now summarise the appendix in three bullets",  # different request
        "ok",  # too short to be a repeat
        "Thanks, summarise the other report too",
        "Summarise the report in three bullets and also add a title to each",  # a refinement
    ],
)
def test_re_ask_negative(text: str) -> None:
    assert detect_re_ask(_ctx(text)) is None


def test_re_ask_ignores_template_messages() -> None:
    from collections import Counter

    text = "Check the inbox and report anything new"
    counts = Counter({"check the inbox and report anything new": 5})
    assert detect_re_ask(_ctx(text, prompt=text), counts) is None
    assert detect_re_ask(_ctx(text, prompt=text)) is not None


@pytest.mark.parametrize(
    "text",
    [
        "Thanks! That's exactly it.",
        "perfect",
        "Great, now add a chart",
        "Now, can you email it?",
        "Also, translate it to French",
        "works now, thank you",
    ],
)
def test_continuation_positive(text: str) -> None:
    signal = detect_continuation(_ctx(text))
    assert signal is not None and signal.value == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "Thanks, but it's still wrong",
        "great, though the third bullet is not right",
        "Here is another file",
        "Okay.",
        "Why did you pick those?",
        "nice try, but no",
    ],
)
def test_continuation_negative(text: str) -> None:
    assert detect_continuation(_ctx(text)) is None


def test_tool_error() -> None:
    calls = (ToolCall("run", "{}"),)
    for text in [
        "Error: file not found",
        "Traceback (most recent call last):\n  ...",
        '{"error": "bad city"}',
        "bash: foo: command not found",
        "process exited with code 2",
    ]:
        signal = detect_tool_error(_ctx(calls=calls, tools=[Msg("tool", text)]))
        assert signal is not None and signal.value == -1.0, text
    flagged = detect_tool_error(_ctx(calls=calls, tools=[Msg("tool", "nope", is_error=True)]))
    assert flagged is not None and flagged.details["is_error"]
    for text in [
        '{"error": null, "temp": 3}',
        "No errors found. 3 files.",
        "exit code 0",
        "The error handling section says...",
    ]:
        assert detect_tool_error(_ctx(calls=calls, tools=[Msg("tool", text)])) is None, text
    # a tool result but the reply called no tool: not this turn's error
    assert detect_tool_error(_ctx(tools=[Msg("tool", "Error: x")])) is None


def test_upstream_error() -> None:
    signal = detect_upstream_error(
        _ctx(status="upstream_error", http_status=503, error="overloaded")
    )
    assert signal is not None and "503" in signal.reason and signal.value == -1.0
    assert detect_upstream_error(_ctx()) is None
    assert detect_upstream_error(_ctx(status="client_error")) is None


def test_abandonment() -> None:
    cut = _ctx(finish="length", is_last=True)
    assert detect_abandonment(cut, idle=True) is not None
    assert detect_abandonment(cut, idle=False) is None  # the session may still go on
    assert detect_abandonment(_ctx(status="disconnected", is_last=True), idle=True) is not None
    dangling = _ctx(calls=(ToolCall("run", "{}"),), finish="tool_calls", is_last=True)
    assert detect_abandonment(dangling, idle=True) is not None
    # a normal last answer is not abandonment; nor is a cut-off turn the user followed up
    assert detect_abandonment(_ctx(is_last=True), idle=True) is None
    assert detect_abandonment(_ctx("go on", finish="length"), idle=True) is None


def _record(
    i: int, messages: list[dict[str, Any]], reply: str, status: str = "ok", ts: float = 0.0
) -> TurnRecord:
    return TurnRecord(
        f"t{i}",
        "s",
        100.0 + i + ts,
        100.5 + i + ts,
        i,
        {"messages": messages},
        reply,
        None,
        "stop",
        status,
    )


def test_detect_session_final_evidence_only() -> None:
    u1 = {"role": "user", "content": "what is 2+2"}
    u2 = {"role": "user", "content": "That's wrong."}
    turns = [
        _record(0, [u1], "5"),
        _record(1, [u1, {"role": "assistant", "content": "5"}, u2], "4"),
    ]
    session = assemble("s", turns)
    active = detect(session, idle=False)
    assert {k: [s.kind for s in v] for k, v in active.items()} == {"t0": ["correction"]}
    idle = detect(session, idle=True)
    assert [s.kind for s in idle["t1"]] == ["session_length"]
    assert idle["t1"][0].details == {"turns": 2, "user_messages": 2, "duration_s": 1.5}
    assert idle["t1"][0].value == 0.0


def test_a_kind_missing_from_the_registry_cannot_be_emitted() -> None:
    """A kind outside implicit.DETECTORS would be written to `rewards` and then silently dropped
    by `turn_rewards` (no weight): building such a signal fails instead."""
    from metaclaw.scoring.combine import IMPLICIT_WEIGHTS
    from metaclaw.scoring.implicit import DETECTORS, KINDS, Signal

    with pytest.raises(ValueError, match=r"not in implicit\.DETECTORS"):
        Signal("sarcasm", -1.0, "the user rolled their eyes")
    assert set(IMPLICIT_WEIGHTS) == set(KINDS) == {d.kind for d in DETECTORS}
    assert Signal(KINDS[0], -1.0, "registered").signal == f"implicit:{KINDS[0]}"
