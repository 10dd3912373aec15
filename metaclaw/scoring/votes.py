"""Judge votes: a strict parse of one reply, and the majority of m votes.

Why strict: a vote that cannot be read unambiguously is worse than no vote — it would put a
made-up label into training. A reply is valid only when it states one score in {+1, 0, -1}:

- as a line `Score: <n>` (any case, optional markdown bold, `+`/`-`/`−` sign), with any amount of
  other text around it; several `Score:` lines must all agree; `1.0`, `2`, `0.5` are invalid;
- or as a JSON object `{"score": n, "reason": "..."}` (optionally in a ```json fence).

The reason is the first `Reason:` line (or the JSON `reason`), cut to `MAX_REASON_CHARS`; a vote
without one is still valid (its reason is None), since the score is what training uses.

Majority: over the valid votes only. The value with strictly the most votes wins; a tie between
the leading values is unresolved evidence and scores 0 (upstream MetaClaw's rule). No valid vote
at all gives no verdict, so no reward is written and the turn is tried again next run.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import orjson

MAX_REASON_CHARS = 300
VALID_SCORES = (-1, 0, 1)

_SCORE_LINE = re.compile(
    r"^[ \t>*_#-]*score[ \t*_]*[:=][ \t*_]*([+\-−]?[ \t]*[\d.]+)[ \t*_.]*$",
    re.IGNORECASE | re.MULTILINE,
)
_REASON_LINE = re.compile(
    r"^[ \t>*_#-]*reason[ \t*_]*:[ \t*_]*(.+?)[ \t*_]*$", re.IGNORECASE | re.MULTILINE
)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Vote:
    """One parsed judge reply; `value` is None when the reply is not a valid vote."""

    value: int | None
    reason: str | None = None
    error: str | None = None  # why the vote is invalid, or why the call failed

    @property
    def valid(self) -> bool:
        return self.value is not None


@dataclass(frozen=True, slots=True)
class Verdict:
    value: int  # -1 | 0 | 1
    agreement: float  # share of valid votes that back the value (ties: the leaders' share)
    valid: int  # number of valid votes
    tie: bool


def _reason(text: str) -> str | None:
    text = " ".join(text.split())
    return text[:MAX_REASON_CHARS] if text else None


def _score(raw: str) -> int | None:
    raw = raw.replace("−", "-").replace(" ", "").replace("\t", "")
    if not re.fullmatch(r"[+-]?\d+", raw):
        return None
    value = int(raw)
    return value if value in VALID_SCORES else None


def _parse_json(text: str) -> Vote | None:
    fenced = _FENCE.match(text)
    body = fenced.group(1) if fenced else text
    if not body.startswith("{"):
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    score = obj.get("score")
    if isinstance(score, bool) or not isinstance(score, int | str):
        return Vote(None, error=f"JSON vote has no integer score: {score!r}")
    value = _score(str(score))
    if value is None:
        return Vote(None, error=f"score {score!r} is not one of +1, 0, -1")
    reason = obj.get("reason")
    return Vote(value, _reason(reason) if isinstance(reason, str) else None)


def parse_vote(text: str | None) -> Vote:
    """Read one judge reply (see the module docstring for what is accepted)."""
    if text is None or not text.strip():
        return Vote(None, error="empty reply")
    text = text.strip()
    as_json = _parse_json(text)
    if as_json is not None:
        return as_json
    raws = _SCORE_LINE.findall(text)
    if not raws:
        return Vote(None, error="no 'Score:' line")
    values = {_score(r) for r in raws}
    if None in values:
        bad = next(r for r in raws if _score(r) is None)
        return Vote(None, error=f"score {bad.strip()!r} is not one of +1, 0, -1")
    if len(values) > 1:
        return Vote(None, error=f"conflicting scores {sorted(v for v in values if v is not None)}")
    reason = _REASON_LINE.search(text)
    return Vote(values.pop(), _reason(reason.group(1)) if reason else None)


def majority(votes: list[Vote]) -> Verdict | None:
    """The panel's verdict; None when no vote is valid."""
    valid = [v.value for v in votes if v.value is not None]
    if not valid:
        return None
    counts = Counter(valid).most_common()
    top = counts[0][1]
    leaders = [value for value, n in counts if n == top]
    tie = len(leaders) > 1
    return Verdict(
        value=0 if tie else leaders[0], agreement=top / len(valid), valid=len(valid), tie=tie
    )


def majority_reason(votes: list[Vote], verdict: Verdict) -> str | None:
    """The reason of the first vote that agrees with the verdict (a tie explains itself)."""
    if verdict.tie:
        scores = ", ".join(f"{v.value:+d}" for v in votes if v.value is not None)
        return f"tie between votes ({scores}): unresolved, scored 0"
    return next((v.reason for v in votes if v.value == verdict.value and v.reason), None)
