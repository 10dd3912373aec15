"""Explicit feedback validation (pure): what `POST /v1/feedback` accepts and refuses."""

from __future__ import annotations

from typing import Any

import pytest

from metaclaw.scoring.feedback import (
    FeedbackError,
    feedback_id,
    feedback_row,
    parse_feedback,
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"turn_id": "t1", "value": 1}, ("t1", None, 1.0, None)),
        (
            {"session_id": "s1", "value": -1, "comment": "wrong file"},
            (None, "s1", -1.0, "wrong file"),
        ),
        ({"turn_id": "t1", "session_id": "s1", "value": 0.25}, ("t1", "s1", 0.25, None)),
        ({"session_id": "agent:main:main", "value": 0}, (None, "agent:main:main", 0.0, None)),
        ({"turn_id": "t", "value": -1.0, "comment": None}, ("t", None, -1.0, None)),
    ],
)
def test_valid(body: dict[str, Any], expected: tuple[Any, ...]) -> None:
    req = parse_feedback(body)
    assert (req.turn_id, req.session_id, req.value, req.comment) == expected
    assert isinstance(req.value, float)


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"value": 1}, "turn_id", "send 'turn_id' or 'session_id'"),
        ({"turn_id": "t", "value": 1.5}, "value", "between -1 and 1"),
        ({"turn_id": "t", "value": -2}, "value", "between -1 and 1"),
        ({"turn_id": "t", "value": float("nan")}, "value", "between -1 and 1"),
        ({"turn_id": "t", "value": "1"}, "value", "must be a number"),
        ({"turn_id": "t", "value": True}, "value", "must be a number"),
        ({"turn_id": "t"}, "value", "'value' is required"),
        ({"turn_id": "t", "value": None}, "value", "'value' is required"),
        ({"turn_id": 7, "value": 1}, "turn_id", "must be a string"),
        ({"turn_id": "", "value": 1}, "turn_id", "must not be empty"),
        ({"session_id": "   ", "value": 1}, "session_id", "must not be empty"),
        ({"turn_id": " t ", "value": 1}, "turn_id", "surrounding whitespace"),
        ({"turn_id": "t\n1", "value": 1}, "turn_id", "control characters"),
        ({"turn_id": "x" * 513, "value": 1}, "turn_id", "longer than 512"),
        ({"turn_id": "t", "value": 1, "comment": 5}, "comment", "must be a string"),
        ({"turn_id": "t", "value": 1, "comment": "x" * 4001}, "comment", "longer than 4000"),
        ({"turn_id": "t", "value": 1, "rating": 5}, "rating", "unknown field"),
    ],
)
def test_invalid(body: dict[str, Any], param: str, words: str) -> None:
    with pytest.raises(FeedbackError) as info:
        parse_feedback(body)
    assert info.value.param == param
    assert words in info.value.message


def test_ids_and_row() -> None:
    assert feedback_id("key-1") == feedback_id("key-1") != feedback_id("key-2")
    # an idempotency key is the sending agent's: another agent's same key is another rating
    assert feedback_id("key-1", "coder") == feedback_id("key-1", "coder")
    assert feedback_id("key-1", "coder") != feedback_id("key-1", "support")
    assert feedback_id("key-1", "coder") != feedback_id("key-1") == feedback_id("key-1", "default")
    assert feedback_id() != feedback_id()
    row = feedback_row(parse_feedback({"session_id": "s", "value": 1}), "f1", 123, "coder")
    assert row == {
        "feedback_id": "f1",
        "turn_id": None,
        "session_id": "s",
        "value": 1.0,
        "comment": None,
        "ts": 123,
        "agent_id": "coder",
    }
