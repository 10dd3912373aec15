"""Render a logged chat turn to (prompt tokens, completion tokens) exactly as our policy serves it.

Used for turns that carry no token ids — upstream-served and backfilled ones, which become SFT
data. Policy-served turns never come through here: their `prompt_token_ids` are the exact tokens
the policy saw, so nothing is re-rendered (re-tokenising can drift from what was served).

The prompt goes through the policy server's own renderer (`metaclaw.serving.chat`: the chat
template, tools described in the system message when the template cannot take them, earlier
tool calls written as `<tool_call>` text) and is encoded the way the server encodes it, so SFT
trains on the prompt format the policy will see. The completion is what the same renderer
appends for the assistant message, encoded on its own (the policy generates it after the
prompt's tokens) and cut after the first end-of-turn token, so the model learns to close its
turn exactly as it will when served.

Anthropic `/v1/messages` requests are first mapped to OpenAI-style messages (top-level system,
text blocks; tool blocks as text).

What was served is rebuilt first: the proxy appended a skills block to the system prompt and
recorded it as `turns.injected_text`, so the prompt is `skills.query.inject(messages, text)`
(`inject_system` for an Anthropic `system`) — SFT trains on the prompt the model actually saw.

A prompt longer than `max_len` tokens is cut reproducibly, never dropped silently: the system
message stays, the oldest other messages go first (tool results with the call they answer),
and if the system message alone is too long its head is kept. The caller counts it.
"""

from __future__ import annotations

import json
from typing import Any


class RenderError(ValueError):
    """The turn cannot be rendered faithfully for this tokenizer."""


class TooLongError(RenderError):
    """Even cut to the system head and the last message, the turn exceeds the length limit."""


TRUNCATION_MARK = "\n[… truncated to fit training.max_seq_len]"
MIN_SYSTEM_TOKENS = 32


def served_request(
    request: dict[str, Any], injected_text: str | None, *, anthropic: bool
) -> dict[str, Any]:
    """The request as the model saw it: the recorded skills block put back where the proxy put
    it (the contract of `turns.injected_text`; `anthropic`: the client spoke /v1/messages)."""
    from metaclaw.skills.query import inject, inject_system

    if not injected_text:
        return request
    if anthropic:
        return {**request, "system": inject_system(request.get("system"), injected_text)}
    messages = request.get("messages")
    if not isinstance(messages, list):
        return request
    return {**request, "messages": inject(messages, injected_text)}


def _text(content: Any) -> str:
    """Anthropic content (a string or a list of blocks) as plain text."""
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content if isinstance(content, list) else [content]:
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict):
            kind = part.get("type")
            if kind in ("text", "input_text", "output_text"):
                parts.append(str(part.get("text", "")))
            elif kind == "tool_result":
                parts.append(_text(part.get("content")))
            elif kind == "tool_use":
                parts.append(json.dumps({"name": part.get("name"), "input": part.get("input")}))
    return "".join(parts)


def chat_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    """OpenAI-style messages of a logged request (Anthropic requests are mapped first)."""
    raw = request.get("messages") or []
    if not isinstance(raw, list) or not raw:
        raise RenderError("request has no messages")
    system = request.get("system")
    if system is None:
        return raw
    messages: list[dict[str, Any]] = [{"role": "system", "content": _text(system)}]
    for msg in raw:
        if not isinstance(msg, dict) or "role" not in msg:
            raise RenderError("request.messages holds an entry without a role")
        messages.append({"role": msg["role"], "content": _text(msg.get("content"))})
    return messages


def _encode(tokenizer: Any, text: str) -> list[int]:
    return [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]


def render_turn(
    tokenizer: Any,
    request: dict[str, Any],
    completion_text: str | None,
    tool_calls: list[dict[str, Any]] | None,
    max_len: int | None = None,
) -> tuple[list[int], list[int], int]:
    """(prompt, completion, messages dropped or cut) token ids for a logged turn, at most
    `max_len` tokens in all."""
    if not completion_text and not tool_calls:
        raise RenderError("the turn has neither completion text nor tool calls")
    messages = chat_messages(request)
    prompt, completion = _render(tokenizer, request, messages, completion_text, tool_calls)
    if max_len is None or len(prompt) + len(completion) <= max_len:
        return prompt, completion, 0
    head = [m for m in messages[:1] if m.get("role") in ("system", "developer")]
    rest = messages[len(head) :]
    cut = 0
    while len(prompt) + len(completion) > max_len and len(rest) > 1:
        rest = rest[1:]
        cut += 1
        while len(rest) > 1 and rest[0].get("role") == "tool":  # its call is gone
            rest = rest[1:]
            cut += 1
        prompt, completion = _render(
            tokenizer, request, [*head, *rest], completion_text, tool_calls
        )
    overflow = len(prompt) + len(completion) - max_len
    if overflow > 0 and head and isinstance(head[0].get("content"), str):
        system = _encode(tokenizer, head[0]["content"])
        keep = len(system) - overflow - len(_encode(tokenizer, TRUNCATION_MARK)) - 8
        if keep >= MIN_SYSTEM_TOKENS:
            text = tokenizer.decode(system[:keep]) + TRUNCATION_MARK
            head = [{**head[0], "content": text}]
            cut += 1
            prompt, completion = _render(
                tokenizer, request, [*head, *rest], completion_text, tool_calls
            )
    if len(prompt) + len(completion) > max_len:
        raise TooLongError(
            f"{len(prompt) + len(completion)} tokens even with the system head "
            f"and the last message only (limit {max_len})"
        )
    return prompt, completion, cut


def _render(
    tokenizer: Any,
    request: dict[str, Any],
    messages: list[dict[str, Any]],
    completion_text: str | None,
    tool_calls: list[dict[str, Any]] | None,
) -> tuple[list[int], list[int]]:
    from metaclaw.serving.chat import normalise_messages, render_prompt, template_supports_tools

    tools = request.get("tools") or None
    prompt_text = render_prompt(tokenizer, messages, tools)
    assistant: dict[str, Any] = {"role": "assistant", "content": completion_text or ""}
    if tool_calls:
        assistant["tool_calls"] = tool_calls
    template = tokenizer.chat_template
    kwargs: dict[str, Any] = {"tools": tools} if tools and template_supports_tools(template) else {}
    full_text = tokenizer.apply_chat_template(
        normalise_messages([*messages, assistant], template, tools),
        tokenize=False,
        add_generation_prompt=False,
        **kwargs,
    )
    eos = tokenizer.eos_token_id
    if full_text.startswith(prompt_text) and len(full_text) > len(prompt_text):
        completion = _encode(tokenizer, full_text[len(prompt_text) :])
        if eos is not None and eos in completion:
            completion = completion[: completion.index(eos) + 1]
    else:  # the template renders history differently from a generation prompt
        completion = _encode(tokenizer, completion_text or "")
        if eos is not None:
            completion.append(eos)
    if tool_calls:
        decoded = tokenizer.decode(completion)
        names = [((c.get("function") or {}).get("name") or "") for c in tool_calls]
        if not all(name and name in decoded for name in names):
            raise RenderError(
                "the chat template does not render tool calls; an SFT target "
                "without them would teach the model to drop the call"
            )
    return _encode(tokenizer, prompt_text), completion
