"""OpenAI chat requests → the model's own prompt text, through its chat template.

The policy must see exactly the prompt format it was (and will be) trained on, so rendering
goes through the tokenizer's chat template. Templates that know about tools get `tools=`;
for those that do not (SmolLM2's ChatML), tools are described in the system message in the
widely used Hermes/Qwen `<tool_call>` convention, and earlier assistant tool calls are written
back in the same form, so a conversation with tools stays consistent across turns.
"""

from __future__ import annotations

import json
from typing import Any

TOOLS_SYSTEM = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    "{tools}\n</tools>\n\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n</tool_call>'
)


class ChatFormatError(ValueError):
    """The request's messages cannot be rendered; the message says what to change."""


def content_text(content: Any, where: str) -> str:
    """Text of an OpenAI message content (string, or a list of text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise ChatFormatError(f"{where}: content parts must be objects")
            if part.get("type") in ("text", "input_text", "output_text"):
                parts.append(str(part.get("text") or ""))
            else:
                raise ChatFormatError(
                    f"{where}: content part type {part.get('type')!r} is not supported by the "
                    "local policy model (text only)"
                )
        return "".join(parts)
    raise ChatFormatError(f"{where}: content must be a string, a list of parts, or null")


def template_supports_tools(template: str | None) -> bool:
    return bool(template) and "tools" in template  # type: ignore[operator]


def template_supports_tool_calls(template: str | None) -> bool:
    return bool(template) and "tool_calls" in template  # type: ignore[operator]


def normalise_messages(
    messages: Any, template: str | None, tools: list[Any] | None
) -> list[dict[str, Any]]:
    """Messages the template can render: string contents, tool calls written as text when
    the template cannot render them, and the tool description when it cannot render `tools`."""
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("'messages' must be a non-empty list")
    native_calls = template_supports_tool_calls(template)
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise ChatFormatError(f"messages[{i}] must be an object with a string 'role'")
        role = "system" if msg["role"] == "developer" else msg["role"]
        item: dict[str, Any] = {
            "role": role,
            "content": content_text(msg.get("content"), f"messages[{i}]"),
        }
        calls = msg.get("tool_calls") or []
        if calls and native_calls:
            item["tool_calls"] = calls
        elif calls:
            item["content"] = "\n".join([item["content"], *(_call_text(c) for c in calls)]).strip()
        for key in ("name", "tool_call_id"):
            if isinstance(msg.get(key), str):
                item[key] = msg[key]
        out.append(item)
    if tools and not template_supports_tools(template):
        described = TOOLS_SYSTEM.format(tools="\n".join(json.dumps(t) for t in tools))
        if out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{described}".strip()}
        else:
            out.insert(0, {"role": "system", "content": described})
    return out


def _call_text(call: Any) -> str:
    fn = call.get("function", {}) if isinstance(call, dict) else {}
    args = fn.get("arguments", "{}")
    try:
        parsed = json.loads(args) if isinstance(args, str) else args
    except ValueError:
        parsed = args
    body = json.dumps({"name": fn.get("name"), "arguments": parsed}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def render_prompt(tokenizer: Any, messages: Any, tools: list[Any] | None) -> str:
    """The prompt text (generation prompt included) for a chat request."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if template is None:
        raise ChatFormatError(
            "the policy model's tokenizer has no chat template; use /v1/completions or a chat model"
        )
    normal = normalise_messages(messages, template, tools)
    kwargs: dict[str, Any] = {"tools": tools} if tools and template_supports_tools(template) else {}
    try:
        return tokenizer.apply_chat_template(
            normal, tokenize=False, add_generation_prompt=True, **kwargs
        )
    except Exception as exc:  # jinja raise_exception() and type errors inside templates
        raise ChatFormatError(f"the chat template rejected these messages: {exc}") from exc
