"""The judge's prompt: a rubric (system message) and one turn in its context (user message).

Why it differs from upstream MetaClaw's: upstream tells the judge "do NOT compare against any
follow-up turn", so a reply the user immediately corrects can still score +1. Here the judge sees
what happened next — the user's next message or the tool results — and the rubric says to use it.
Bump `PROMPT_VERSION` whenever the text below changes: it is part of the scorer version recorded
with every score, and a new version is what lets history be re-judged.
"""

from __future__ import annotations

from dataclasses import dataclass

from metaclaw.scoring.transcript import Msg, TurnContext

PROMPT_VERSION = "p1"
CONTEXT_MESSAGES = 8  # earlier messages shown before the turn under review
MAX_MESSAGE_CHARS = 2000
MAX_SYSTEM_CHARS = 1500
MAX_REPLY_CHARS = 6000
MAX_NEXT_CHARS = 3000

RUBRIC = """\
You review one assistant turn from a real conversation between a user and an AI assistant that \
may call tools. You are shown the conversation so far, the assistant turn under review, and — \
when it exists — what happened next: the user's next message, or the results of the tools the \
assistant called.

Decide whether the turn moved the user's task forward correctly.
Use what happened next as evidence:
- the user corrects the assistant, repeats the request, or says it did not work → the turn failed;
- the user builds on the answer, moves on, or thanks the assistant → the turn helped;
- a tool result shows an error caused by the assistant's call → the turn failed.

Scores:
+1 = correct and helpful (for a tool call: the right tool with sensible arguments);
-1 = wrong, off-task, unhelpful, ignores an instruction, or what happened next shows it failed;
 0 = not enough evidence to tell.

Think briefly if you need to, then end your reply with exactly these two lines:
Score: <+1, 0 or -1>
Reason: <one short sentence>"""


@dataclass(frozen=True, slots=True)
class JudgeCase:
    """One turn to judge: its id and the chat messages the judge receives."""

    turn_id: str
    session_id: str
    messages: tuple[dict[str, str], ...]
    next_state: str  # user | tool | user+tool | none


def _cut(text: str, limit: int) -> str:
    text = text.strip()
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [{len(text) - limit} more characters cut]"


def _render(msg: Msg, limit: int = MAX_MESSAGE_CHARS) -> str:
    label = {"tool": "tool result"}.get(msg.role, msg.role)
    if msg.role == "tool" and msg.is_error:
        label = "tool result (error)"
    parts = [_cut(msg.text, limit)] if msg.text.strip() else []
    parts += [f"→ calls {c.name}({_cut(c.arguments, 500)})" for c in msg.tool_calls]
    return f"[{label}] " + ("\n".join(parts) if parts else "(empty)")


def next_state_kind(ctx: TurnContext) -> str:
    roles = {m.role for m in ctx.next_state or []}
    kinds = [k for k in ("user", "tool") if k in roles]
    return "+".join(kinds) if kinds else "none"


def build_case(ctx: TurnContext) -> JudgeCase:
    """The judge's view of one turn: context, the reply, and what happened next."""
    sections: list[str] = []
    if ctx.system:
        sections.append("## System prompt\n" + _cut(ctx.system, MAX_SYSTEM_CHARS))
    convo = ctx.conversation
    shown = convo[-CONTEXT_MESSAGES:]
    history = "\n\n".join(_render(m) for m in shown) or "(no earlier messages)"
    if len(convo) > len(shown):
        history = f"({len(convo) - len(shown)} earlier messages omitted)\n\n" + history
    sections.append("## Conversation so far\n" + history)
    sections.append("## Assistant turn under review\n" + _render(ctx.reply, MAX_REPLY_CHARS))
    if ctx.next_state:
        budget = max(MAX_NEXT_CHARS // len(ctx.next_state), 300)
        after = "\n\n".join(_render(m, budget) for m in ctx.next_state)
    else:
        after = "(nothing: the session ended after this turn)"
    sections.append("## What happened next\n" + after)
    sections.append(
        "Was the assistant turn under review correct and helpful? End with the "
        "two lines 'Score: …' and 'Reason: …'."
    )
    messages = (
        {"role": "system", "content": RUBRIC},
        {"role": "user", "content": "\n\n".join(sections)},
    )
    return JudgeCase(ctx.turn.turn_id, ctx.turn.session_id, messages, next_state_kind(ctx))
