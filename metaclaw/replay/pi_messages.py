"""OpenClaw (pi) messages → OpenAI chat messages, as the model saw them.

pi keeps richer messages than the chat API (thinking blocks, tool results as their own role,
shell runs, summaries); its providers flatten them before each call. This mirrors that
flattening so a reconstructed request reads like the one sent: text and image parts, tool calls
with JSON-string arguments, `toolResult` → `tool`, summaries and shell runs as user text, and
errored or aborted replies left out of later requests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from metaclaw.replay.model import ParseOptions
from metaclaw.replay.rows import json_arguments, openai_usage

_STOP = {"stop": "stop", "length": "length", "toolUse": "tool_calls", "tool_use": "tool_calls"}
COMPACTION_PREFIX = (
    "The conversation history before this point was compacted into this summary:\n\n"
)
BRANCH_PREFIX = "Summary of a branch of this conversation that was left:\n\n"

Message = dict[str, Any]


def _image_part(part: dict[str, Any], opts: ParseOptions) -> dict[str, Any]:
    data = data if isinstance(data := part.get("data"), str) else ""
    mime = part.get("mimeType") if isinstance(part.get("mimeType"), str) else "image/png"
    size = len(data) * 3 // 4
    if size > opts.max_inline_image_bytes:
        digest = hashlib.sha256(data.encode()).hexdigest()[:16]
        return {
            "type": "text",
            "text": f"[image {mime}, {size} bytes, sha256 {digest}: omitted on import]",
        }
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def user_content(content: Any, opts: ParseOptions) -> str | list[dict[str, Any]]:
    """User content keeps its shape: a string stays a string, parts stay parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    parts: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif part.get("type") == "image":
            parts.append(_image_part(part, opts))
    return parts


def plain_text(content: Any) -> str:
    """Text of content parts (images as a short marker), for roles that take a string."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        elif isinstance(part, dict) and part.get("type") == "image":
            texts.append(f"[image {part.get('mimeType') or ''}]".replace(" ]", "]"))
    return "\n".join(texts)


def _bash_text(msg: Message) -> str:
    text = f"Ran `{msg.get('command', '')}`\n```\n{msg.get('output') or ''}\n```"
    if msg.get("cancelled"):
        text += "\n\n(command cancelled)"
    elif msg.get("exitCode") not in (0, None):
        text += f"\n\nCommand exited with code {msg.get('exitCode')}"
    return text


def context_message(msg: Message, opts: ParseOptions) -> Message | str | None:
    """A non-assistant message in OpenAI shape; None when pi keeps it out of the model's
    context; a string saying what is wrong when it cannot be read."""
    role = msg.get("role")
    if role == "user":
        return {"role": "user", "content": user_content(msg.get("content"), opts)}
    if role == "toolResult":
        call_id = msg.get("toolCallId")
        if not isinstance(call_id, str):
            return "toolResult without 'toolCallId'"
        return {"role": "tool", "tool_call_id": call_id, "content": plain_text(msg.get("content"))}
    if role == "bashExecution":
        return (
            None if msg.get("excludeFromContext") else {"role": "user", "content": _bash_text(msg)}
        )
    if role in ("custom", "hookMessage"):
        return {"role": "user", "content": user_content(msg.get("content"), opts)}
    if role == "compactionSummary":
        return {"role": "user", "content": COMPACTION_PREFIX + str(msg.get("summary") or "")}
    if role == "branchSummary":
        return {"role": "user", "content": BRANCH_PREFIX + str(msg.get("summary") or "")}
    return f"unknown message role {role!r}"


@dataclass(slots=True)
class Reply:
    message: Message
    finish_reason: str | None
    status: str
    error: str | None
    in_context: bool  # pi drops errored/aborted replies from later requests


def assistant_reply(msg: Message) -> Reply | str:
    content = msg.get("content")
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        return "assistant message without a 'content' list"
    texts: list[str] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            texts.append(str(part.get("text") or ""))
        elif kind == "thinking":
            thinking.append(str(part.get("thinking") or ""))
        elif kind == "toolCall":
            calls.append(
                {
                    "id": str(part.get("id") or ""),
                    "type": "function",
                    "function": {
                        "name": str(part.get("name") or ""),
                        "arguments": json_arguments(part.get("arguments")),
                    },
                }
            )
    reply: Message = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        reply["tool_calls"] = calls
    if thinking:
        reply["reasoning_content"] = "\n".join(thinking)
    stop = msg.get("stopReason")
    if stop == "error":
        error = str(msg.get("errorMessage") or "the provider returned an error")
        return Reply(reply, None, "upstream_error", error, False)
    if stop == "aborted":
        return Reply(reply, None, "disconnected", str(msg.get("errorMessage") or "aborted"), False)
    finish = _STOP.get(stop) if isinstance(stop, str) else None
    if finish is None:
        finish = "tool_calls" if calls else "stop"
    return Reply(reply, finish, "ok", None, True)


def usage_of(raw: Any) -> dict[str, Any] | None:
    """pi usage (input excludes cache reads/writes) → OpenAI usage; all-zero means unknown."""
    if not isinstance(raw, dict):
        return None

    def num(key: str) -> int:
        value = raw.get(key)
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0

    inp, out, read, write = num("input"), num("output"), num("cacheRead"), num("cacheWrite")
    total = num("totalTokens") or num("total")
    if not (inp or out or read or write or total):
        return None
    prompt = inp + read + write
    return openai_usage(prompt, out, total or prompt + out, read)
