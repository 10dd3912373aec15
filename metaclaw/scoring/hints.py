"""Hints: what a user says the reply should have been, kept as text for hindsight distillation.

A hint is the user's own words about one assistant turn — "no, always end with 'Cheers'", "too
long", "use metric units", or a feedback comment. The hinted teacher
(`metaclaw/training/hint_teacher.py`) puts the hint into the policy's context and scores the
tokens the policy actually sampled; the difference is the training signal. So a hint must be an
instruction about how to answer, and a wrong one teaches the wrong thing: like the implicit
detectors, extraction fires only on explicit markers and stays silent when in doubt.

Sources:
- **corrections**: the user's next message after a reply, when the correction detector
  (`implicit.detect_correction`) fires on it and it says more than "no", or when it states a
  preference about the answer (length, format, units, language, a sign-off, always/never);
- **feedback comments** (`feedback.comment`): on a negative rating any comment that is not bare
  sentiment; on any rating, a comment that states such a preference.

Each hint carries the turn it is about (`turn_id`: the reply to re-score) and where it came
from (`from_id`: the next turn whose user message said it, or the feedback row). Pure: callers
give sessions (`transcript.Session`) and feedback rows.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from metaclaw.scoring.implicit import detect_correction
from metaclaw.scoring.transcript import Session, TurnContext

HINT_VERSION = "hints-v1"
CORRECTION = "correction"
FEEDBACK = "feedback"
MAX_HINT_CHARS = 500
MIN_HINT_WORDS = 2  # "no" / "wrong" alone say something failed, not what to do

_LANGUAGES = (
    r"english|french|german|spanish|italian|portuguese|dutch|chinese|japanese|korean|"
    r"russian|arabic|hindi|polish|swedish"
)
_STYLE = (
    rf"metric|imperial|celsius|fahrenheit|(si )?units?|bullet( points?)?|bullets|markdown|"
    rf"json|yaml|a table|tables|plain text|a list|numbered lists?|code blocks?|"
    rf"fewer words|simpler words|simple words|short sentences|one sentence|"
    rf"{_LANGUAGES}|formal|informal|british spelling|american spelling|emojis?"
)
_PREFERENCE = re.compile(
    r"\b("
    r"(too|way too|far too|a bit|bit) (long|short|verbose|wordy|brief|formal|informal|casual|"
    r"technical|vague|complicated|detailed)"
    r"|(be|keep it|make it|much|way|a bit|even) (more )?(shorter|longer|brief|briefer|concise|"
    r"short|simpler|clearer|more concise|more detailed)"
    r"|^(shorter|longer|more concise|less verbose|simpler)\b"
    r"|(always|never|do not|don'?t|stop|please don'?t|please always|please never) "
    r"(\w+ ){0,3}(use|end|start|sign|answer|reply|respond|write|include|add|say|mention|"
    r"apologi[sz]e|repeat|explain|give|put|format|call|capitali[sz]e)"
    r"|(end|finish|close|sign) (every|each|all|your)? ?(answers?|repl(y|ies)|messages?|responses?"
    r"|it)? ?(off )?with\b"
    r"|sign[- ]off"
    r"|(use|in|with|into) (the )?(" + _STYLE + r")\b"
    r"|(answer|reply|respond|write|speak|talk)( to me)? in (" + _LANGUAGES + r")\b"
    r"|(no more than|at most|under|fewer than|less than|maximum( of)?|max) \d+ "
    r"(words|sentences|lines|characters|bullet points|paragraphs)"
    r"|(one|two|three|a single) (sentence|line|word|paragraph) (answers?|only|max|please)"
    r")",
)
_SENTIMENT_ONLY = re.compile(
    r"^(bad|wrong|incorrect|not good|not helpful|unhelpful|useless|meh|no|nope|terrible|awful|"
    r"poor|thumbs down|-1|great|good|perfect|thanks|thank you|nice|ok(ay)?|fine|helpful|"
    r"excellent|awesome|love it|exactly|correct|right|yes|\+1|thumbs up)"
    r"( (answer|reply|response|job|one|work))?[.!]*$"
)
_LEAD = re.compile(r"^(no|nope|nah|wrong|incorrect|not quite|not right)\b[\s,.!;:—-]*")


@dataclass(frozen=True, slots=True)
class Hint:
    """One user hint about one assistant turn."""

    hint_id: str  # stable: re-extraction of the same evidence gives the same id
    turn_id: str  # the assistant turn the hint is about
    session_id: str | None
    source: str  # CORRECTION | FEEDBACK
    text: str  # the instruction, in the user's words
    from_id: str | None  # the next turn (correction) or the feedback row (feedback)


def _clean(text: str) -> str:
    return " ".join(text.lower().replace("’", "'").split()).lstrip("\"'*_>-• ")


def _tidy(text: str) -> str:
    text = " ".join(text.split()).strip()
    return text if len(text) <= MAX_HINT_CHARS else text[:MAX_HINT_CHARS].rstrip() + "…"


def states_preference(text: str) -> bool:
    """The text says how answers should be (length, format, units, language, sign-off…)."""
    return _PREFERENCE.search(_clean(text)) is not None


def correction_hint(ctx: TurnContext) -> str | None:
    """The hint in the user's message that follows `ctx`'s reply, or None."""
    nxt = ctx.next_user_text
    if nxt is None or not nxt.strip():
        return None
    if states_preference(nxt):
        return _tidy(nxt)
    if detect_correction(ctx) is None:
        return None
    rest = _LEAD.sub("", _clean(nxt), count=1)
    if len(re.findall(r"[\w']+", rest)) < MIN_HINT_WORDS:
        return None
    return _tidy(nxt)


def comment_hint(value: float, comment: str | None) -> str | None:
    """The hint in a feedback comment, or None (bare sentiment says nothing to do)."""
    if comment is None or not comment.strip():
        return None
    clean = _clean(comment)
    if _SENTIMENT_ONLY.match(clean):
        return None
    if states_preference(comment):
        return _tidy(comment)
    if value < 0 and len(re.findall(r"[\w']+", clean)) >= MIN_HINT_WORDS:
        return _tidy(comment)
    return None


def hint_id(turn_id: str, source: str, from_id: str | None, text: str) -> str:
    key = "\x1f".join([HINT_VERSION, turn_id, source, from_id or "", text])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def hints_from_session(session: Session) -> list[Hint]:
    """Hints from the user's reactions to each reply of one session, in turn order."""
    out = []
    for ctx in session.turns:
        text = correction_hint(ctx)
        if text is None:
            continue
        tid = ctx.turn.turn_id
        out.append(
            Hint(
                hint_id(tid, CORRECTION, ctx.next_turn_id, text),
                tid,
                session.session_id,
                CORRECTION,
                text,
                ctx.next_turn_id,
            )
        )
    return out


def hints_from_feedback(rows: Iterable[dict[str, Any]]) -> list[Hint]:
    """Hints from feedback rows already tied to a turn (`turn_feedback`-style: `turn_id`,
    `feedback_id`, `value`, `comment`, optional `session_id`). Rows with no turn are skipped."""
    out = []
    for row in rows:
        tid = row.get("turn_id")
        text = comment_hint(float(row.get("value") or 0.0), row.get("comment"))
        if not tid or text is None:
            continue
        fid = row.get("feedback_id")
        out.append(
            Hint(hint_id(tid, FEEDBACK, fid, text), tid, row.get("session_id"), FEEDBACK, text, fid)
        )
    return out
