"""Cheap features of one turn for the reward model: what the user asked, what the reply said,
how it ended, and what happened next (pure, given an embedder).

Why these: the judge decides from the same evidence (the request, the reply, the user's next
message or the tool results), so the model sees it too, through the static MiniLM table the
skills library already loads (~0.1 ms a text, no torch). The reply's last line gets its own
embedding because how a reply closes (a sign-off, a question back, a cut-off) is invisible in
the mean over a long reply. A dozen lexical/structural counts carry what embeddings blur:
length, code, lists, tool calls, truncation, overlap with the request, whether the next state
is a user message, a tool result, an error, or nothing. Bump `FEATURE_VERSION` whenever this
changes: it is part of every model version, so old models are never fed new features.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from metaclaw.scoring.transcript import TurnContext

FEATURE_VERSION = "f1"
MAX_TEXT_CHARS = 4000
TAIL_CHARS = 200
_WORD = re.compile(r"[a-z0-9]+")
LEXICAL = (
    "log_reply_chars",
    "log_reply_lines",
    "log_user_chars",
    "has_code",
    "has_list",
    "ends_with_question",
    "tool_calls",
    "cut_off",
    "user_overlap",
    "next_user",
    "next_tool",
    "next_tool_error",
    "next_none",
    "reply_next_similarity",
    "user_reply_similarity",
)
"""The lexical/structural columns, in order; they come first in the feature matrix."""


class Embedder(Protocol):
    def embed(self, texts: list[str]) -> np.ndarray: ...


def reply_text(ctx: TurnContext) -> str:
    """The reply as text, tool calls included (a tool-calling turn has little else)."""
    calls = "\n".join(f"calls {c.name}({c.arguments[:300]})" for c in ctx.reply.tool_calls)
    return "\n".join(t for t in (ctx.reply.text.strip(), calls) if t)[:MAX_TEXT_CHARS]


def tail_text(reply: str) -> str:
    """The reply's last non-empty line (at most `TAIL_CHARS` of it)."""
    lines = [line for line in reply.splitlines() if line.strip()]
    return lines[-1].strip()[-TAIL_CHARS:] if lines else ""


def next_text(ctx: TurnContext) -> str:
    """What happened next as text: the user's words, else the tool results ("" for nothing)."""
    user = ctx.next_user_text
    if user is not None:
        return user[:MAX_TEXT_CHARS]
    return "\n".join(m.text for m in ctx.next_tool_results)[:MAX_TEXT_CHARS]


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def lexical(ctx: TurnContext, reply: str) -> list[float]:
    """The `LEXICAL` columns of one turn (similarities are filled in by `features`)."""
    user = ctx.last_user_text
    asked = _words(user)
    tools = ctx.next_tool_results
    return [
        math.log1p(len(reply)),
        math.log1p(reply.count("\n") + 1 if reply else 0),
        math.log1p(len(user)),
        float("```" in reply),
        float(bool(re.search(r"^\s*(?:[-*•]|\d+[.)])\s", reply, re.M))),
        float(reply.rstrip().endswith("?")),
        float(len(ctx.reply.tool_calls)),
        float(ctx.turn.finish_reason == "length"),
        len(asked & _words(reply)) / len(asked) if asked else 0.0,
        float(ctx.next_user_text is not None),
        float(bool(tools)),
        float(any(m.is_error for m in tools)),
        float(ctx.next_state is None),
        0.0,
        0.0,
    ]


def features(contexts: Sequence[TurnContext], embedder: Embedder) -> np.ndarray:
    """The feature matrix: `LEXICAL` columns, then the embeddings of the request, the reply,
    the reply's last line and what happened next."""
    if not contexts:
        return np.zeros((0, len(LEXICAL)), np.float64)
    replies = [reply_text(c) for c in contexts]
    users = [c.last_user_text[:MAX_TEXT_CHARS] for c in contexts]
    nexts = [next_text(c) for c in contexts]
    n = len(contexts)
    emb = embedder.embed(users + replies + [tail_text(r) for r in replies] + nexts)
    user_e, reply_e, tail_e, next_e = (emb[i * n : (i + 1) * n] for i in range(4))
    lex = np.array([lexical(c, r) for c, r in zip(contexts, replies, strict=True)], np.float64)
    lex[:, LEXICAL.index("reply_next_similarity")] = np.sum(reply_e * next_e, axis=1)
    lex[:, LEXICAL.index("user_reply_similarity")] = np.sum(user_e * reply_e, axis=1)
    return np.hstack([lex, user_e, reply_e, tail_e, next_e]).astype(np.float64)
