"""The retrieval query of a request, and the injection of the skills block (pure functions).

Why strip: OpenClaw prefixes user messages with a timestamp (`[Wed 2026-11-25 21:17 UTC]`), a
`Runtime: agent=… | host=…` line, and "Conversation info (untrusted metadata)" JSON blocks, and it
sends an internal-context user message (`<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>`) *after* the real
one. Upstream MetaClaw embedded all that, so every turn retrieved the same skills (its issue #39).
The query here is the latest user message that has words of the user's own, with that noise gone.
"""

from __future__ import annotations

import re
from typing import Any

BEGIN_INTERNAL = "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>"
END_INTERNAL = "<<<END_OPENCLAW_INTERNAL_CONTEXT>>>"
_REMINDER = ("<system-reminder>", "</system-reminder>")
# Searched with no leading `^\s*` or `.*?` (those made cleaning quadratic); where a hit starts
# is checked by position instead
_METADATA_HEADER = re.compile(r"\((?:un)?trusted metadata\):[ \t]*\n", re.I)
MAX_LABEL_CHARS = 80  # the "<label> " before "(untrusted metadata):"
_FENCE_OPEN = re.compile(r"```[a-z]*\n")
_TIMESTAMP = re.compile(
    r"\[(?:[A-Z][a-z]{2} )?\d{4}-\d{2}-\d{2}[ T]\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?"
    r"(?: ?[A-Z]{2,5}|Z|[+-]\d{2}:?\d{2})?\]\s*"
)
_RUNTIME = re.compile(r"Runtime: [^\n]*(?:\n|\Z)")
_TRAILING = re.compile(r"[ \t]*\n?")
_BLANKS = re.compile(r"\n\n\n+")  # a literal prefix: searched at C speed
MAX_QUERY_CHARS = 2000
# The query is the first MAX_QUERY_CHARS of the cleaned text, so only the head of a huge message
# is cleaned on the proxy's path: a bound on work however many markers an attacker packs in
MAX_CLEAN_CHARS = 64 * 1024


def content_text(content: Any) -> str:
    """The text of a message content: a string, or its text parts (OpenAI and Anthropic)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            str(p.get("text") or "")
            for p in content
            if isinstance(p, dict) and p.get("type") in ("text", "input_text")
        )
    return ""


def clean_user_text(text: str) -> str:
    """A user message without channel metadata, timestamps, runtime lines or internal context.

    Linear time whatever the input: every step scans forward with `str.find` or an anchored
    match at a line start. (Lazy `.*?` patterns searched over the text took quadratic time on
    unclosed tags: 132 KiB of them froze the proxy for 4.5 s.)
    """
    text = _cut_spans(text, BEGIN_INTERNAL, END_INTERNAL, unclosed_to_end=True)
    text = _cut_spans(text, *_REMINDER, unclosed_to_end=False)
    text = _strip_metadata_blocks(text)
    text = _strip_line_prefixes(text, _RUNTIME)
    text = _strip_line_prefixes(text, _TIMESTAMP)
    return _BLANKS.sub("\n\n", text).strip()


def _cut_spans(text: str, opening: str, closing: str, *, unclosed_to_end: bool) -> str:
    """`text` without each `opening … closing` span (an unclosed one: to the end, or kept)."""
    out: list[str] = []
    keep = 0
    while (start := text.find(opening, keep)) >= 0:
        stop = text.find(closing, start + len(opening))
        if stop < 0:  # no closing after this opening, hence none after any later one either
            if unclosed_to_end:
                out.append(text[keep:start])
                keep = len(text)
            break
        out.append(text[keep:start])
        keep = stop + len(closing)
    out.append(text[keep:])
    return "".join(out)


class _Finder:
    """`text.find(needle, start)` for non-decreasing starts in amortised linear time: a
    result (or a miss) found from one start answers every later start it still covers."""

    def __init__(self, text: str, needle: str) -> None:
        self.text, self.needle = text, needle
        self.searched_from, self.found = -1, -1

    def find(self, start: int) -> int:
        if (
            self.searched_from >= 0
            and start >= self.searched_from
            and (self.found < 0 or self.found >= start)
        ):
            return self.found
        self.searched_from, self.found = start, self.text.find(self.needle, start)
        return self.found


def _line_start(text: str, pos: int, floor: int) -> int:
    """Where the line holding `pos` starts if that is at or after `floor`, else -1 (each
    header ends its line, so these backward scans never overlap: linear in all)."""
    newline = text.rfind("\n", floor, pos)
    if newline >= 0:
        return newline + 1
    return floor if floor == 0 or text[floor - 1] == "\n" else -1


def _strip_metadata_blocks(text: str) -> str:
    """Drop `<label> (untrusted metadata):` lines with the fenced block or bare `{…}` object
    that follows them (OpenClaw's channel metadata)."""
    fence_end, brace_end = _Finder(text, "\n```"), _Finder(text, "\n}")
    out: list[str] = []
    keep = 0
    for header in _METADATA_HEADER.finditer(text):
        start = _line_start(text, header.start(), keep)
        if start < 0 or header.start() - start > MAX_LABEL_CHARS:
            continue
        block, end = header.end(), -1
        if fence := _FENCE_OPEN.match(text, block):
            close = fence_end.find(fence.end())
            end = close + 4 if close >= 0 else -1
        elif text.startswith("{", block):
            close = brace_end.find(block + 1)
            end = close + 2 if close >= 0 else -1
        if end >= 0:
            out.append(text[keep:start])
            keep = trail.end() if (trail := _TRAILING.match(text, end)) else end
    out.append(text[keep:])
    return "".join(out)


def _strip_line_prefixes(text: str, body: re.Pattern[str]) -> str:
    """`re.sub(r"^\\s*" + body, "", text, flags=re.M)` in linear time: `body` is searched on
    its own and a hit counts when only whitespace lies between a line start and it (`^\\s*`
    retried at every line start of a long blank run is what made this quadratic)."""
    out: list[str] = []
    keep = floor = 0
    for match in body.finditer(text):
        hit = match.start()
        if hit < keep:
            continue
        lo = max(keep, floor)
        run = lo + len(text[lo:hit].rstrip())  # where the whitespace before the hit begins
        floor = hit + 1  # the hit's first character is not whitespace
        start = run if run == 0 or text[run - 1] == "\n" else text.find("\n", run, hit) + 1
        if start == 0 and run > 0:  # no line start between the run and the hit
            continue
        out.append(text[keep:start])
        keep = match.end()
    out.append(text[keep:])
    return "".join(out)


def extract_query(messages: Any) -> str:
    """The retrieval query: the latest user message with words of its own, cleaned."""
    if not isinstance(messages, list):
        return ""
    for msg in reversed(messages):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        text = clean_user_text(content_text(msg.get("content"))[:MAX_CLEAN_CHARS])
        if text:
            return text[:MAX_QUERY_CHARS]
    return ""


def inject(messages: list[dict[str, Any]], block: str) -> list[dict[str, Any]]:
    """New OpenAI-style messages with `block` appended to the first system message (one is
    created at the front when absent). The input list and its dicts are never mutated."""
    if not block:
        return list(messages)
    out = list(messages)
    for i, msg in enumerate(out):
        if isinstance(msg, dict) and msg.get("role") in ("system", "developer"):
            out[i] = {**msg, "content": append_to_content(msg.get("content"), block)}
            return out
    return [{"role": "system", "content": block}, *out]


def inject_system(system: Any, block: str) -> Any:
    """An Anthropic `system` field (absent, a string or text blocks) with `block` appended."""
    if not block:
        return system
    if system is None or system == "":
        return block
    return append_to_content(system, block)


def append_to_content(content: Any, block: str) -> Any:
    """A content value (string or list of parts) with `block` added as text at the end."""
    if isinstance(content, list):
        return [*content, {"type": "text", "text": block}]
    text = content if isinstance(content, str) else ""
    return f"{text}\n\n{block}" if text else block
