"""Hints that compile to an enforceable reply shape: real phrasing, what is not a rule, and that
every reply the compiled regex accepts obeys the rule the user stated (checked with the
preference rules the learning benchmark scores by, which the parser never sees)."""

from __future__ import annotations

import re

import pytest

from metaclaw.learning.preferences import PREFERENCES, ends_with, one_sentence, word_count
from metaclaw.scoring.hint_rules import (
    ONE_SENTENCE,
    PARAGRAPH,
    max_words,
    rule_for,
    standing_rule,
    words_body,
)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("Too long. Keep it under 15 words, please.", 14),
        ("answer in at most 20 words", 20),
        ("No more than ten words!", 10),
        ("keep replies fewer than 8 words and no lists", 7),
        ("Max 30 words.", 30),
        ("under 15 words, actually make it under 12 words", 11),
    ],
)
def test_word_limits_from_real_phrasing(text: str, limit: int) -> None:
    assert max_words(text) == limit
    rule = rule_for([text])
    assert rule is not None and rule.max_words == limit


@pytest.mark.parametrize(
    "text",
    [
        "Too long.",  # no number: a hint for a reading teacher, not a rule
        "be more concise",
        "I wrote 15 words yesterday",  # a number of words, but no bound on the reply
        "under 0 words",
        "use metric units",
        "Please answer in French, not English.",
        "",
    ],
)
def test_no_rule_when_the_text_states_no_shape(text: str) -> None:
    assert rule_for([text]) is None


def test_one_sentence() -> None:
    rule = rule_for(["Please answer in one sentence only, without a list."])
    assert rule is not None and rule.body == ONE_SENTENCE


@pytest.mark.parametrize(
    ("text", "suffix"),
    [
        ("No, you forgot to end with 'Cheers!'. Please always end with it.", " Cheers!"),
        ("always sign off with “Best, Ana”", " Best, Ana"),
        ('finish every answer with the word "Over"', " Over"),
    ],
)
def test_sign_offs_become_a_suffix(text: str, suffix: str) -> None:
    rule = rule_for([text])
    assert rule is not None and rule.suffix == suffix and rule.body == PARAGRAPH


def test_prefix_and_limit_combine_and_share_the_word_budget() -> None:
    rule = rule_for(["start with 'Sure thing'", "keep it under 11 words"])
    assert rule is not None
    assert rule.prefix == "Sure thing " and rule.max_words == 10
    assert rule.body == words_body(8)  # 10 words minus the prefix's two
    assert rule.grammar_regex.startswith(re.escape("Sure thing "))


def test_a_limit_the_sign_off_cannot_fit_in_is_no_rule() -> None:
    assert rule_for(["under 2 words", "end with 'Kind regards'"]) is None


@pytest.mark.parametrize(
    "reply",
    [
        "Paris.",
        "The capital of France is Paris, a city on the Seine.",
        "One two three four five six seven eight nine ten eleven twelve thirteen fourteen.",
        "It is 4.",
    ],
)
def test_every_reply_the_word_body_accepts_obeys_the_limit(reply: str) -> None:
    body = re.compile(words_body(14))
    if body.fullmatch(reply):
        assert 0 < word_count(reply) <= 14
    tail = " and" + " more" * 14 + "."  # fifteen more words: over the limit whatever came before
    assert body.fullmatch(reply[:-1] + tail) is None


def test_word_body_rejects_line_breaks_and_unfinished_sentences() -> None:
    body = re.compile(words_body(14))
    assert body.fullmatch("Paris.") is not None
    assert body.fullmatch("Paris") is None  # a sentence must end
    assert body.fullmatch("1. Paris\n2. Lyon.") is None


def test_one_sentence_body_agrees_with_the_benchmark_rule() -> None:
    body = re.compile(ONE_SENTENCE)
    for reply in ("Water boils at 100 degrees Celsius.", "Yes!", "- a list\n- of things."):
        if body.fullmatch(reply):
            assert one_sentence(reply)
    assert body.fullmatch("First. Second.") is None


def test_suffix_rule_output_obeys_the_sign_off_rule() -> None:
    rule = rule_for(["No, you forgot to end with 'Cheers!'."])
    assert rule is not None
    assert ends_with("Cheers!")("Spiders have eight legs." + rule.suffix)


def test_words_body_needs_a_positive_limit() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        words_body(0)


def test_each_benchmark_correction_states_its_rule_and_the_rule_yields_compliant_replies() -> None:
    """What the scripted user says when correcting compiles to a shape whose replies the
    benchmark then counts as compliant; a language is not a shape, so `french` has no rule."""
    body = "Paris is lovely."
    with_rule = set()
    for kind, pref in PREFERENCES.items():
        rule = rule_for([pref.correction])
        if rule is None:
            continue
        with_rule.add(kind)
        assert re.fullmatch(rule.body, body), kind
        assert pref.complies(rule.prefix + body + rule.suffix), kind
    assert with_rule == set(PREFERENCES) - {"french"}


# `HintRule.holds`: what the deploy gate checks a reply against (`deploy.stated_rules`)
CASES = [
    "Paris is the capital of France. Cheers!",
    "Paris. **Cheers!**",
    "Cheers!",
    "Sure! Paris is the capital of France.",
    "sure!  Paris.",
    "Sure!",
    "Paris is the capital.",
    "Paris is the capital. It is in France.",
    "It is Paris\nin France.",
    "- Paris\n- Lyon",
    "Four.",
    "The answer is clearly four, of course, my friend.",
    "Surely Paris. Cheers",
    "Paris is lovely, cheers!",
    "",
]


def test_holds_agrees_with_the_benchmark_rule_for_each_stated_preference() -> None:
    """The gate's check and the benchmark's independent scorer agree reply by reply."""
    for kind in ("sign_off", "opener", "terse", "brevity", "one_sentence"):
        pref = PREFERENCES[kind]
        rule = rule_for([pref.correction])
        assert rule is not None
        for reply in CASES:
            assert rule.holds(reply) == pref.complies(reply), (kind, reply)


def test_holds_checks_every_stated_part_together() -> None:
    rule = rule_for(["Start with 'Sure!' and end with 'Cheers!', at most 6 words."])
    assert rule is not None
    assert rule.holds("Sure! Paris, in France. Cheers!")
    assert rule.holds("Sure! Paris. cheers")  # words count, case and punctuation do not
    assert not rule.holds("Paris, in France. Cheers!")  # no opener
    assert not rule.holds("Sure! Paris is in the north of France. Cheers!")  # 9 words


def test_a_rule_users_keep_stating_stands_and_a_stray_remark_does_not() -> None:
    said = [
        ("t1", "No, you forgot to end with 'Cheers!'. Please always end with it."),
        ("t1", "No, you forgot to end with 'Cheers!'. Please always end with it."),  # same turn
        ("t2", "please keep it under 5 words"),
    ]
    assert standing_rule(said, min_support=2) is None  # each shape is about one turn only
    rule = standing_rule([*said, ("t3", "always sign off with 'Cheers!'")], min_support=2)
    assert rule is not None and rule.describe() == "ends with 'Cheers!'"
    both = standing_rule([*said, ("t3", "sign off with 'Cheers!'"), ("t4", "under 5 words")], 2)
    assert both is not None and both.describe() == "at most 4 words, ends with 'Cheers!'"
    assert standing_rule(said, min_support=1) == rule_for([s for _, s in said])
    with pytest.raises(ValueError, match="min_support"):
        standing_rule(said, min_support=0)
