"""Implicit feedback: what the conversation itself says about a turn, without an LLM.

Each detector is a pure function over a turn in its session and returns at most one signal with
its evidence. Precision matters more than recall: a detector fires only on explicit markers, and
says nothing when in doubt (a silent detector costs a little recall; a wrong one poisons the
training signal). Detector values are in [-1, 1].

`DETECTORS` is the one registry of kinds: each kind's value, its weight in the reward rule
(`combine.turn_rewards_sql` reads `WEIGHTS`) and what fires it. The reward view and the table in
docs/scoring.md are generated from it (a test keeps the doc in step), and a `Signal` of a kind
the registry does not know cannot be built, so no kind is written to `rewards` and then silently
ignored by `turn_rewards`. Adding a detector: docs/developing.md.

A signal is only emitted once its evidence is final, so a row never has to be taken back:
next-state detectors wait for the next state; `abandonment` and `session_length` wait for the
session to be idle.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from metaclaw.scoring.transcript import Session, TurnContext

IMPLICIT_VERSION = "implicit-v1"

CORRECTION = "correction"
RE_ASK = "re_ask"
CONTINUATION = "continuation"
ABANDONMENT = "abandonment"
TOOL_ERROR = "tool_error"
UPSTREAM_ERROR = "upstream_error"
SESSION_LENGTH = "session_length"


@dataclass(frozen=True)
class Detector:
    """One implicit kind: what it emits, how much it moves the reward, and when it fires."""

    kind: str
    value: str  # the value it emits, as the docs show it
    weight: float  # its weight in the reward rule, in [0, 1] (0: diagnosis only)
    fires_when: str


DETECTORS: tuple[Detector, ...] = (
    Detector(
        CORRECTION,
        "−1",
        1.0,
        "the user's next message corrects the reply (\"no, I "
        'meant…", "that\'s wrong", "it still doesn\'t work"); a bare "no" after a '
        "reply that asked a question does not count",
    ),
    Detector(
        RE_ASK,
        "−1",
        0.6,
        "the user repeats the request (word similarity ≥ 0.75 and ≥ 90 % "
        'of its content words), or says "try again"; texts a session sends ≥ 3 times '
        "(heartbeats) are ignored",
    ),
    Detector(
        CONTINUATION,
        "+1",
        0.5,
        'the user builds on the reply ("thanks", "great, '
        'now…", "also,") with no sign of trouble ("but", "still", "not", '
        '"error"…)',
    ),
    Detector(
        TOOL_ERROR,
        "−1",
        0.5,
        "a result of the tools the reply called is flagged "
        '`is_error` or reads as a failure (`Error:`, traceback, `{"error": …}`, non-zero '
        "exit); sometimes the tool's fault, hence the lower weight",
    ),
    Detector(UPSTREAM_ERROR, "−1", 1.0, "the LLM call itself failed (`status = upstream_error`)"),
    Detector(
        ABANDONMENT,
        "−1",
        0.5,
        "the session went idle right after a turn that left the user "
        "without an answer: client hung up mid-reply, cut off at the token limit, or tool "
        "calls whose results never came",
    ),
    Detector(
        SESSION_LENGTH,
        "0",
        0.0,
        "on a session's last turn once idle; details: turns, user "
        "messages, duration. It also marks the session as fully evaluated (diagnosis only)",
    ),
)
KINDS = tuple(d.kind for d in DETECTORS)
WEIGHTS: dict[str, float] = {d.kind: d.weight for d in DETECTORS}


def render_markdown() -> str:
    """The implicit rows of the signals table in docs/scoring.md (generated, test-checked)."""
    lines = [
        "| signal | value | weight in reward | emitted when |",
        "|---|---|---|---|",
        "| `judge` | −1/0/+1 (majority) | — | the turn has a next state, or its session is idle |",
    ]
    lines += [
        f"| `implicit:{d.kind}` | {d.value} | {d.weight:g} | {d.fires_when} |" for d in DETECTORS
    ]
    return "\n".join(lines) + "\n"


EVIDENCE_CHARS = 200
RE_ASK_MIN_WORDS = 4  # "yes", "ok", "continue" repeated are not re-asks
RE_ASK_SIMILARITY = 0.75  # word-sequence similarity of the two requests
RE_ASK_COVERAGE = 0.9  # share of the first request's content words the repeat contains
_STOPWORDS = frozenset(
    (
        "a",
        "an",
        "the",
        "and",
        "or",
        "of",
        "to",
        "in",
        "on",
        "at",
        "for",
        "with",
        "by",
        "from",
        "is",
        "are",
        "be",
        "it",
        "this",
        "that",
        "i",
        "you",
        "me",
        "my",
        "your",
        "please",
        "can",
        "could",
        "would",
        "will",
        "do",
        "does",
        "just",
        "now",
        "again",
        "so",
    )
)
TEMPLATE_REPEATS = 3  # a text a session sends this often is a template (heartbeat), not a re-ask


@dataclass(frozen=True, slots=True)
class Signal:
    kind: str
    value: float
    reason: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in WEIGHTS:
            raise ValueError(
                f"implicit kind {self.kind!r} is not in implicit.DETECTORS: register "
                "it there (weight and docs) before emitting it"
            )

    @property
    def signal(self) -> str:
        return f"implicit:{self.kind}"


def _clean(text: str) -> str:
    return " ".join(text.lower().replace("’", "'").split()).lstrip("\"'*_>-• ")


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EVIDENCE_CHARS else text[:EVIDENCE_CHARS] + "…"


# -- correction -----------------------------------------------------------------------------

_NO_START = re.compile(
    r"^(no|nope|nah)\b(?![\s,.!;:—-]*(thanks|thank you|thx|problem|worries|need|rush|hurry|"
    r"doubt|that'?s (all|it|fine|ok|great|perfect|good))\b)"
)
_CORRECTION_PHRASES = re.compile(
    r"\b("
    r"(that|this|it|which)('s| is| was) (wrong|incorrect|not (right|correct|true|what i))"
    r"|you('re| are) wrong|wrong (answer|file|one|command|function|language|approach)"
    r"|not what i (asked|wanted|meant|said|need)"
    r"|i meant\b|i said\b|i asked (you )?(for|to)\b|you misunderstood|misunderstood (me|the)"
    r"|(that|this|it) (didn'?t|did not|doesn'?t|does not) work"
    r"|(still|again) (broken|failing|fails|not working|doesn'?t work|the same error)"
    r"|you (forgot|missed|ignored|skipped) "
    r"|(that|this) is not what"
    r")"
)
_INCORRECT_START = re.compile(r"^(wrong|incorrect|not (quite|right|correct))\b")


def detect_correction(ctx: TurnContext) -> Signal | None:
    """The user's next message corrects the reply ("no, I meant…", "that's wrong")."""
    text = ctx.next_user_text
    if text is None:
        return None
    clean = _clean(text)
    asked_question = ctx.reply.text.rstrip().endswith("?")
    marker = _CORRECTION_PHRASES.search(clean) or _INCORRECT_START.match(clean)
    if marker is None and not asked_question:  # "no" answers a question; it corrects a claim
        marker = _NO_START.match(clean)
    if marker is None:
        return None
    return Signal(
        CORRECTION,
        -1.0,
        f"user corrected the reply: “{_quote(text)}”",
        {"marker": marker.group(0).strip()},
    )


# -- re-ask ---------------------------------------------------------------------------------

_RETRY = re.compile(
    r"^(please )?(try (it )?again|again[.!]?$|retry|one more time"
    r"|(can|could) you (try|do (it|that)) again|redo (it|that))"
)


def _words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def detect_re_ask(ctx: TurnContext, user_text_counts: Counter[str] | None = None) -> Signal | None:
    """The user repeats the request this turn answered (or asks to try again)."""
    nxt = ctx.next_user_text
    if nxt is None:
        return None
    clean = _clean(nxt)
    if _RETRY.match(clean):
        return Signal(RE_ASK, -1.0, f"user asked to try again: “{_quote(nxt)}”", {"retry": True})
    before = ctx.last_user_text
    a, b = _words(before), _words(nxt)
    if min(len(a), len(b)) < RE_ASK_MIN_WORDS:
        return None
    if user_text_counts is not None and user_text_counts[" ".join(b)] >= TEMPLATE_REPEATS:
        return None
    ratio = difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()
    content = {w for w in a if w not in _STOPWORDS}
    coverage = len(content & set(b)) / len(content) if content else 0.0
    if ratio < RE_ASK_SIMILARITY or coverage < RE_ASK_COVERAGE:
        return None
    return Signal(
        RE_ASK,
        -1.0,
        f"user repeated the request (similarity {ratio:.2f}): “{_quote(nxt)}”",
        {"similarity": round(ratio, 3)},
    )


# -- continuation ---------------------------------------------------------------------------

_POSITIVE_START = re.compile(
    r"^(thanks|thank you|thx|ty\b|great|perfect|awesome|excellent|nice|cool|brilliant|amazing|"
    r"wonderful|lovely|good job|well done|exactly|that works|it works|works now|that worked|"
    r"it worked|got it|makes sense|ok(ay)?,? (great|thanks|cool|perfect)|"
    r"yes,? (that'?s (it|right|perfect|great)|exactly|perfect|great|it works)|"
    r"now,? (can|could|let'?s|please|add|make|do|write|show)|next,|next:|also,|and now|"
    r"building on|based on (that|this|your)|following (that|this|up))(?!\w)"
)
_NEGATIVE = re.compile(
    r"\b(but|however|though|still|wrong|error|errors|fail|failed|fails|failing|broken|"
    r"doesn'?t|didn'?t|isn'?t|wasn'?t|not|no longer|instead|actually|again)\b"
)


def detect_continuation(ctx: TurnContext) -> Signal | None:
    """The user builds on the answer (thanks, moves on) with no sign of trouble."""
    nxt = ctx.next_user_text
    if nxt is None:
        return None
    clean = _clean(nxt)
    marker = _POSITIVE_START.match(clean)
    if marker is None or _NEGATIVE.search(clean):
        return None
    return Signal(
        CONTINUATION,
        1.0,
        f"user built on the reply: “{_quote(nxt)}”",
        {"marker": marker.group(0).strip()},
    )


# -- errors ---------------------------------------------------------------------------------

_TOOL_FAILURE = re.compile(
    r"(^(error|exception|traceback|fatal|failed|failure)\b"
    r"|traceback \(most recent call last\)"
    r"|^\{\s*\"error\"\s*:(?!\s*(null|\"\"|false|\{\}|\[\]))"
    r"|command not found|no such file or directory|permission denied"
    r"|exit(ed)? (with )?(code|status) [1-9]\d*)",
    re.IGNORECASE | re.MULTILINE,
)


def detect_tool_error(ctx: TurnContext) -> Signal | None:
    """A result of the tools this turn called reports a failure."""
    if not ctx.reply.tool_calls:
        return None
    for result in ctx.next_tool_results:
        text = result.text.strip()
        if result.is_error or _TOOL_FAILURE.search(text[:4000]):
            how = "flagged is_error" if result.is_error else "reported a failure"
            return Signal(
                TOOL_ERROR,
                -1.0,
                f"tool result {how}: “{_quote(text)}”",
                {"tool_call_id": result.tool_call_id, "is_error": result.is_error},
            )
    return None


def detect_upstream_error(ctx: TurnContext) -> Signal | None:
    """The LLM call itself failed (the turn has no usable reply)."""
    t = ctx.turn
    if t.status != "upstream_error":
        return None
    return Signal(
        UPSTREAM_ERROR,
        -1.0,
        f"upstream error HTTP {t.http_status}: {_quote(t.error or '')}",
        {"http_status": t.http_status},
    )


# -- end of session -------------------------------------------------------------------------


def detect_abandonment(ctx: TurnContext, idle: bool) -> Signal | None:
    """The session ended right after a turn that left the user without an answer.

    Only unambiguous endings count: the client hung up mid-reply, the reply was cut off at the
    token limit, or it called tools whose results never came back. A session that simply ends
    after a normal answer is as likely a success as a failure, so it is not a signal.
    """
    if not (ctx.is_last and idle):
        return None
    t = ctx.turn
    if t.status == "disconnected":
        why = "the client disconnected mid-reply and the session ended"
    elif t.status == "ok" and t.finish_reason == "length":
        why = "the reply was cut off at the token limit and the session ended"
    elif t.status == "ok" and ctx.reply.tool_calls:
        why = "the reply called tools, no result came back, and the session ended"
    else:
        return None
    return Signal(ABANDONMENT, -1.0, why, {"status": t.status, "finish_reason": t.finish_reason})


def session_length(session: Session) -> Signal:
    """Length of a finished session, on its last turn: a feature for diagnosis, not a reward
    (weight 0). Its row also marks the session as fully evaluated at this implicit version."""
    last = session.turns[-1]
    users = sum(1 for m in last.conversation if m.role == "user")
    first = min(c.turn.ts_start for c in session.turns)
    details = {
        "turns": len(session.turns),
        "user_messages": users,
        "duration_s": round(session.last_activity - first, 3),
    }
    return Signal(
        SESSION_LENGTH,
        0.0,
        f"session of {len(session.turns)} turns, {users} user messages",
        details,
    )


def detect(session: Session, *, idle: bool) -> dict[str, list[Signal]]:
    """Every signal whose evidence is final, by turn id."""
    counts: Counter[str] = Counter()
    if session.turns:
        counts.update(
            " ".join(_words(m.text)) for m in session.turns[-1].conversation if m.role == "user"
        )
    out: dict[str, list[Signal]] = {}
    for ctx in session.turns:
        found = [detect_upstream_error(ctx), detect_abandonment(ctx, idle)]
        if ctx.next_state is not None:
            correction = detect_correction(ctx)
            re_ask = detect_re_ask(ctx, counts)
            found += [correction, re_ask, detect_tool_error(ctx)]
            if correction is None and re_ask is None:
                found.append(detect_continuation(ctx))
        signals = [s for s in found if s is not None]
        if signals:
            out[ctx.turn.turn_id] = signals
    if idle and session.turns:
        out.setdefault(session.turns[-1].turn.turn_id, []).append(session_length(session))
    return out
