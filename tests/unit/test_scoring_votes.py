"""Judge vote parsing (strict) and the majority rule with its tie handling."""

from __future__ import annotations

import pytest

from metaclaw.scoring.votes import Vote, majority, majority_reason, parse_vote


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Score: 1\nReason: correct", 1),
        ("Score: +1\nReason: correct", 1),
        ("Score: -1\nReason: wrong", -1),
        ("Score: −1\nReason: unicode minus", -1),
        ("score: 0\nreason: unclear", 0),
        ("**Score:** 1\n**Reason:** bold markdown", 1),
        ("Score = -1", -1),
        # extra text around the score line is fine
        (
            "The user asked for X.\nThe reply gave Y, which is wrong.\n\n"
            "Score: -1\nReason: wrong Y",
            -1,
        ),
        ("Score: 1\nReason: good\n\nLet me know if you need more.", 1),
        # repeated, agreeing score lines
        ("Score: 1\n...on reflection...\nScore: +1", 1),
        ('{"score": -1, "reason": "ignored the instruction"}', -1),
        ('```json\n{"score": 1, "reason": "fine"}\n```', 1),
        ('{"score": "+1", "reason": "string score"}', 1),
    ],
)
def test_valid_votes(text: str, value: int) -> None:
    vote = parse_vote(text)
    assert vote.valid and vote.value == value, vote.error


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (None, "empty"),
        ("", "empty"),
        ("   \n ", "empty"),
        ("I think it was a good answer overall.", "no 'Score:' line"),
        ("Reason: looks right", "no 'Score:' line"),  # missing score
        ("The score is 1 in my view.", "no 'Score:' line"),  # not a score line
        ("Score: 1 because it is good", "no 'Score:' line"),  # extra text on the score line
        ("Score: 2\nReason: out of range", "not one of"),
        ("Score: 0.5", "not one of"),
        ("Score: 1.0", "not one of"),
        ("Score: 1\nReason: good\nScore: -1", "conflicting"),
        ('{"score": 3, "reason": "x"}', "not one of"),
        ('{"score": true}', "no integer score"),
        ('{"reason": "no score"}', "no integer score"),
    ],
)
def test_invalid_votes(text: str | None, error: str) -> None:
    vote = parse_vote(text)
    assert not vote.valid and vote.value is None
    assert error in (vote.error or "")


def test_reason_is_first_reason_line_and_bounded() -> None:
    vote = parse_vote("Score: 1\nReason: " + "x" * 1000 + "\nReason: second")
    assert vote.reason is not None and len(vote.reason) == 300 and set(vote.reason) == {"x"}
    assert parse_vote("Score: 1").reason is None  # still a valid vote without a reason
    assert parse_vote('{"score": 0, "reason": "  two   spaces "}').reason == "two spaces"


def _votes(*values: int | None) -> list[Vote]:
    return [Vote(v, f"r{v}") if v is not None else Vote(None, error="bad") for v in values]


def test_majority_clear() -> None:
    verdict = majority(_votes(1, 1, -1))
    assert verdict is not None and verdict.value == 1 and not verdict.tie
    assert verdict.agreement == pytest.approx(2 / 3) and verdict.valid == 3
    assert majority(_votes(-1, -1, -1)).agreement == 1.0  # type: ignore[union-attr]


def test_majority_counts_only_valid_votes() -> None:
    verdict = majority(_votes(None, -1, None))
    assert verdict is not None and verdict.value == -1 and verdict.valid == 1
    verdict = majority(_votes(1, None, 1))
    assert verdict is not None and verdict.value == 1 and verdict.agreement == 1.0


@pytest.mark.parametrize("values", [(1, -1), (1, -1, 0), (1, 0, None), (-1, 0)])
def test_ties_score_zero(values: tuple[int | None, ...]) -> None:
    verdict = majority(_votes(*values))
    assert verdict is not None and verdict.value == 0 and verdict.tie
    assert "tie" in (majority_reason(_votes(*values), verdict) or "")


def test_no_valid_vote_is_no_verdict() -> None:
    assert majority(_votes(None, None, None)) is None
    assert majority([]) is None


def test_majority_reason_comes_from_an_agreeing_vote() -> None:
    votes = [Vote(-1, "wrong city"), Vote(1, "fine"), Vote(-1, "Lyon is not the capital")]
    verdict = majority(votes)
    assert verdict is not None and majority_reason(votes, verdict) == "wrong city"
