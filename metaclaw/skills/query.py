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

INTERNAL_CONTEXT = re.compile(
    r"<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>.*?(<<<END_OPENCLAW_INTERNAL_CONTEXT>>>|\Z)", re.S
)
_METADATA_BLOCK = re.compile(
    r"^[^\n]{0,80}\((?:un)?trusted metadata\):[ \t]*\n"  # "Sender (untrusted metadata):"
    r"(?:```[a-z]*\n.*?\n```|\{.*?\n\})[ \t]*\n?",  # a fenced block, or a bare {...} object
    re.S | re.M | re.I,
)
_TIMESTAMP = re.compile(
    r"^\s*\[(?:[A-Z][a-z]{2} )?\d{4}-\d{2}-\d{2}[ T]\d{1,2}:\d{2}(?::\d{2})?(?:\.\d+)?"
    r"(?: ?[A-Z]{2,5}|Z|[+-]\d{2}:?\d{2})?\]\s*",
    re.M,
)
_RUNTIME = re.compile(r"^\s*Runtime: [^\n]*(?:\n|$)", re.M)
_SYSTEM_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)
_BLANKS = re.compile(r"\n{3,}")
MAX_QUERY_CHARS = 2000


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
    """A user message without channel metadata, timestamps, runtime lines or internal context."""
    text = INTERNAL_CONTEXT.sub("", text)
    text = _SYSTEM_REMINDER.sub("", text)
    text = _METADATA_BLOCK.sub("", text)
    text = _RUNTIME.sub("", text)
    text = _TIMESTAMP.sub("", text)
    return _BLANKS.sub("\n\n", text).strip()


def extract_query(messages: Any) -> str:
    """The retrieval query: the latest user message with words of its own, cleaned."""
    if not isinstance(messages, list):
        return ""
    for msg in reversed(messages):
        if not isinstance(msg, dict) or msg.get("role") != "user":
            continue
        text = clean_user_text(content_text(msg.get("content")))
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
