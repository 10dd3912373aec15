"""The compliance rules the learning benchmark counts with: real replies, near misses."""

from __future__ import annotations

import pytest

from metaclaw.learning.preferences import (
    HELD_OUT_QUESTIONS,
    PREFERENCES,
    TEACHING_QUESTIONS,
    word_count,
)


def test_word_count_ignores_punctuation_and_markup() -> None:
    assert word_count("**Paris** — the capital (of France)!") == 5
    assert word_count("It's 3.5 km, isn't it?") == 5
    assert word_count("") == 0


@pytest.mark.parametrize(
    ("kind", "reply", "ok"),
    [
        ("brevity", "The capital of France is Paris.", True),
        (
            "brevity",
            "Paris is the capital of France, and it is known for art, food, fashion and "
            "the Eiffel Tower.",
            False,
        ),
        ("brevity", "", False),
        ("sign_off", "Paris is the capital of France. Cheers!", True),
        ("sign_off", "Paris is the capital of France. cheers", True),
        ("sign_off", "Cheers! Paris is the capital of France.", False),  # at the start, not the end
        ("sign_off", "Cheers!", False),  # an echo with no answer
        ("sign_off", "Paris is the capital. Cheers to you all, friend.", False),
        ("one_sentence", "Spiders have eight legs.", True),
        ("one_sentence", "Spiders have eight legs. Insects have six.", False),
        ("one_sentence", "Spiders have:\n- eight legs", False),
        ("one_sentence", "1. Eight", False),
        ("one_sentence", "It is -18. This is a fundamental property of water and", False),
        ("one_sentence", "The freezing point of water is 0 degrees and it", False),  # cut off
        ("one_sentence", "There are 7.5 billion people.", True),  # a decimal point is no end
        ("terse", "Seven days.", True),
        ("terse", "A week has seven days in it.", False),
        ("opener", "Sure! A week has seven days.", True),
        ("opener", "**Sure**, a week has seven days.", True),
        ("opener", "A week has seven days. Sure!", False),  # at the end, not the start
        ("opener", "Sure!", False),  # no answer after it
        ("french", "La capitale de la France est Paris, et c'est une belle ville.", True),
        ("french", "The capital of France is Paris, and it is a lovely city.", False),
        ("french", "Paris.", False),  # too little to tell
    ],
)
def test_rules_on_real_replies(kind: str, reply: str, ok: bool) -> None:
    assert PREFERENCES[kind].complies(reply) is ok


def test_each_preference_is_stated_and_corrected_in_words() -> None:
    for pref in PREFERENCES.values():
        first = pref.ask("What is 2 + 2?")
        assert first.startswith(pref.instruction) and first.endswith("What is 2 + 2?")
        assert pref.correction and pref.correction != pref.instruction


def test_held_out_questions_are_never_taught() -> None:
    assert not set(TEACHING_QUESTIONS) & set(HELD_OUT_QUESTIONS)
    assert len(set(TEACHING_QUESTIONS)) == len(TEACHING_QUESTIONS)
    assert len(set(HELD_OUT_QUESTIONS)) == len(HELD_OUT_QUESTIONS)


def test_both_kinds_of_preference_are_present() -> None:
    """Some kinds the base model shows by itself (learnable from ratings), some it never does
    (they need a teacher that follows the hint): the benchmark reports them apart."""
    flags = {p.base_rate_nonzero for p in PREFERENCES.values()}
    assert flags == {True, False}
