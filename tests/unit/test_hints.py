"""Hint extraction on real phrasing: what users say when they correct a reply or comment on it,
and what they say that is not a hint (precision first)."""

from __future__ import annotations

import pytest

from metaclaw.scoring.hints import (
    CORRECTION,
    FEEDBACK,
    comment_hint,
    correction_hint,
    hints_from_feedback,
    hints_from_session,
)
from metaclaw.scoring.transcript import Msg, Session, TurnContext, TurnRecord


def _ctx(
    next_user: str | None,
    *,
    turn_id: str = "t1",
    next_turn_id: str | None = "t2",
    reply: str = "The mountain is 29,032 feet tall.",
) -> TurnContext:
    turn = TurnRecord(turn_id, "s", 1.0, 2.0, 0, None, reply, None, "stop", "ok", None, None)
    state = [Msg("user", next_user)] if next_user is not None else None
    return TurnContext(
        turn=turn,
        messages=[Msg("user", "How tall is Everest?")],
        reply=Msg("assistant", reply),
        next_state=state,
        next_turn_id=next_turn_id if next_user is not None else None,
    )


@pytest.mark.parametrize(
    "text",
    [
        "no, always end with 'Cheers'",
        "too long",
        "Way too verbose, please.",
        "use metric units",
        "Please answer in French from now on.",
        "Keep it shorter",
        "No — I said metric units.",
        "You forgot to sign off with Cheers",
        "don't use bullet points",
        "never apologise, just answer",
        "That's wrong, the height is 8,849 m",
        "no more than 20 words please",
        "one sentence answers only",
        "End every reply with a question.",
    ],
)
def test_corrections_and_preferences_are_hints(text: str) -> None:
    assert correction_hint(_ctx(text)) == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "thanks!",
        "No thanks, that's all",
        "no problem",
        "no",
        "Wrong.",
        "What about K2?",
        "ok",
        "Great, now do Mont Blanc",
        "Can you also list the other 8000ers?",
        "Use this for my school project",  # "use" without a style/format/unit word
        "I'm in France next week",  # "in France" is not "in French"
        "Is that in the Himalayas?",
    ],
)
def test_other_replies_are_not_hints(text: str) -> None:
    assert correction_hint(_ctx(text)) is None


def test_a_no_that_answers_a_question_is_not_a_hint() -> None:
    assert correction_hint(_ctx("No, go ahead", reply="Shall I convert it?")) is None


def test_each_hint_names_the_turn_it_is_about_and_the_turn_it_came_from() -> None:
    session = Session(
        "s",
        [
            _ctx("too long", turn_id="t1", next_turn_id="t2"),
            _ctx("thanks", turn_id="t2", next_turn_id="t3"),
            _ctx("no, I said metric units", turn_id="t3", next_turn_id="t4"),
            _ctx(None, turn_id="t4"),
        ],
    )
    hints = hints_from_session(session)
    assert [(h.turn_id, h.from_id, h.source, h.text) for h in hints] == [
        ("t1", "t2", CORRECTION, "too long"),
        ("t3", "t4", CORRECTION, "no, I said metric units"),
    ]
    assert all(h.session_id == "s" for h in hints)
    assert [h.hint_id for h in hints_from_session(session)] == [h.hint_id for h in hints]
    assert len({h.hint_id for h in hints}) == 2


@pytest.mark.parametrize(
    ("value", "comment", "hint"),
    [
        (-1.0, "too long", "too long"),
        (
            -1.0,
            "It should mention the source of the figure",
            "It should mention the source of the figure",
        ),
        (-0.5, "answer in metric units", "answer in metric units"),
        (1.0, "good, but always end with Cheers", "good, but always end with Cheers"),
        (-1.0, "bad", None),
        (-1.0, "Wrong answer!", None),
        (-1.0, "", None),
        (-1.0, None, None),
        (1.0, "Great answer", None),
        (1.0, "this helped me a lot with the report", None),
    ],
)
def test_feedback_comments(value: float, comment: str | None, hint: str | None) -> None:
    assert comment_hint(value, comment) == hint


def test_feedback_hints_keep_their_turn_and_row() -> None:
    rows = [
        {
            "feedback_id": "f1",
            "turn_id": "t1",
            "session_id": "s",
            "value": -1.0,
            "comment": "use celsius",
        },
        {
            "feedback_id": "f2",
            "turn_id": None,
            "session_id": "s",
            "value": -1.0,
            "comment": "use celsius",
        },  # not tied to a turn yet: nothing to re-score
        {
            "feedback_id": "f3",
            "turn_id": "t2",
            "session_id": "s",
            "value": 1.0,
            "comment": "perfect",
        },
    ]
    (hint,) = hints_from_feedback(rows)
    assert (hint.turn_id, hint.from_id, hint.source, hint.text) == (
        "t1",
        "f1",
        FEEDBACK,
        "use celsius",
    )
