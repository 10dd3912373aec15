"""Anthropic Messages <-> OpenAI Chat Completions translation.

Lets an Anthropic client (``POST /v1/messages``, e.g. Claude Code or the Anthropic SDK) be
served by an OpenAI-compatible upstream (OpenAI, vLLM, SGLang, ...): the request is translated
to a chat completion request, and the response, streamed or not, is translated back.

Translation is lossy where the two APIs differ; the choices made are the ones that keep an
agent loop working: tool calls and their results keep their ids and order, every tool call ends
with ``stop_reason: "tool_use"``, and anything the upstream cannot take (thinking history,
cache-control markers, Anthropic-only request options) is dropped rather than rejected.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import orjson

from metaclaw.proxy.errors import ANTHROPIC_TYPES

__all__ = [
    "OpenAIToAnthropicStream",
    "anthropic_request_to_openai",
    "encode_anthropic_event",
    "finish_reason_to_stop_reason",
    "openai_error_to_anthropic",
    "openai_response_to_anthropic",
]

AnthropicEvent = tuple[str, dict[str, Any]]

_STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

_TOOL_CHOICES: dict[str, str] = {"auto": "auto", "any": "required", "none": "none"}


def _as_dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


# --------------------------------------------------------------------------------------------
# Request: Anthropic -> OpenAI
# --------------------------------------------------------------------------------------------


def anthropic_request_to_openai(body: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """Translate a Messages API request body into a Chat Completions request body.

    ``model``, when given, replaces the body's model (the proxy routes to its own upstream).
    Only options both APIs understand are carried over; ``top_k``, ``thinking`` and
    ``cache_control`` have no portable OpenAI equivalent and are dropped.
    """
    messages: list[dict[str, Any]] = []
    system = _system_text(body.get("system"))
    if system:
        messages.append({"role": "system", "content": system})
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            messages.extend(_convert_message(message))

    out: dict[str, Any] = {"model": model or body.get("model"), "messages": messages}
    if body.get("max_tokens") is not None:
        out["max_tokens"] = body["max_tokens"]
    stop = body.get("stop_sequences")
    if stop:
        out["stop"] = [stop] if isinstance(stop, str) else list(stop)
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stream"):
        out["stream"] = True
        # Without this the upstream never reports token counts on a stream.
        out["stream_options"] = {"include_usage": True}
    elif "stream" in body:
        out["stream"] = False

    tools = [_convert_tool(t) for t in body.get("tools") or [] if isinstance(t, dict)]
    tools = [t for t in tools if t is not None]
    if tools:
        out["tools"] = tools
    tool_choice = _as_dict(body.get("tool_choice"))
    choice_type = tool_choice.get("type")
    if choice_type == "tool" and tool_choice.get("name"):
        out["tool_choice"] = {"type": "function", "function": {"name": tool_choice["name"]}}
    elif isinstance(choice_type, str) and choice_type in _TOOL_CHOICES:
        out["tool_choice"] = _TOOL_CHOICES[choice_type]
    if tool_choice.get("disable_parallel_tool_use") is True and tools:
        out["parallel_tool_calls"] = False

    user_id = _as_dict(body.get("metadata")).get("user_id")
    if user_id:
        out["user"] = str(user_id)
    return out


def _system_text(system: object) -> str:
    """A system prompt is a string or a list of text blocks; blocks are joined by a blank line.

    A plain string (not content parts) is used because many OpenAI-compatible servers' chat
    templates only accept string system content.
    """
    if isinstance(system, str):
        return system
    if isinstance(system, list):
        texts = [
            b.get("text") or ""
            for b in system
            if isinstance(b, dict) and b.get("type", "text") == "text"
        ]
        return "\n\n".join(t for t in texts if t)
    return ""


def _convert_message(message: dict[str, Any]) -> list[dict[str, Any]]:
    """One Anthropic message becomes one or more OpenAI messages.

    A user message's ``tool_result`` blocks become ``role: "tool"`` messages that come first
    (OpenAI requires them right after the assistant turn that made the calls), followed by a
    user message with the remaining content, if any.
    """
    role = message.get("role")
    content = message.get("content")
    if role == "assistant":
        return [_convert_assistant(content)]
    if isinstance(content, str):
        return [{"role": role or "user", "content": content}]
    if not isinstance(content, list):
        return [{"role": role or "user", "content": ""}]

    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "tool_result":
            text, images = _tool_result_content(block)
            out.append(
                {"role": "tool", "tool_call_id": block.get("tool_use_id") or "", "content": text}
            )
            # OpenAI tool messages carry text only; images travel with the following user turn.
            parts.extend(images)
        else:
            part = _content_part(block)
            if part is not None:
                parts.append(part)
    if parts or not out:
        out.append({"role": role or "user", "content": _simplify(parts)})
    return out


def _convert_assistant(content: object) -> dict[str, Any]:
    """Assistant text joins into ``content``; ``tool_use`` blocks become ``tool_calls``.

    Thinking blocks are dropped: an OpenAI upstream cannot verify or use their signatures.
    """
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            tool_input = block.get("input")
            if isinstance(tool_input, str):
                arguments = tool_input  # already JSON text (a lenient client); don't re-encode
            else:
                arguments = json.dumps(
                    tool_input if tool_input is not None else {}, ensure_ascii=False
                )
            tool_calls.append(
                {
                    "id": block.get("id") or "",
                    "type": "function",
                    "function": {"name": block.get("name") or "", "arguments": arguments},
                }
            )
    text = "\n".join(t for t in texts if t)
    msg: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return msg


def _tool_result_content(block: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """Text of a tool_result (string or text blocks joined), plus any image parts it had."""
    content = block.get("content")
    images: list[dict[str, Any]] = []
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        texts: list[str] = []
        for item in content:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "text":
                texts.append(item.get("text") or "")
            elif item.get("type") == "image":
                part = _content_part(item)
                if part is not None:
                    images.append(part)
        text = "\n".join(texts)
    else:
        text = ""
    if block.get("is_error"):
        text = "Error: " + text
    return text, images


def _content_part(block: dict[str, Any]) -> dict[str, Any] | None:
    """An Anthropic user content block as an OpenAI content part (``None``: no equivalent)."""
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": block.get("text") or ""}
    if kind == "image":
        source = _as_dict(block.get("source"))
        if source.get("type") == "base64":
            media_type = source.get("media_type") or "image/png"
            url = f"data:{media_type};base64,{source.get('data') or ''}"
        elif source.get("type") == "url" and source.get("url"):
            url = source["url"]
        else:
            return None
        return {"type": "image_url", "image_url": {"url": url}}
    if kind == "document":
        source = _as_dict(block.get("source"))
        if source.get("type") == "text":
            return {"type": "text", "text": source.get("data") or ""}
        if source.get("type") == "base64":
            media_type = source.get("media_type") or "application/pdf"
            file: dict[str, Any] = {
                "file_data": f"data:{media_type};base64,{source.get('data') or ''}"
            }
            if block.get("title"):
                file["filename"] = block["title"]
            return {"type": "file", "file": file}
    return None


def _simplify(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text-only content becomes one string (joined by newlines, as vLLM does itself).

    Many OpenAI-compatible chat templates accept only string content; parts are kept only when
    there is something that is not text (an image or a file).
    """
    if all(p.get("type") == "text" for p in parts):
        return "\n".join(p.get("text") or "" for p in parts)
    return parts


def _convert_tool(tool: dict[str, Any]) -> dict[str, Any] | None:
    name = tool.get("name")
    if not name:
        return None
    function: dict[str, Any] = {"name": name}
    if tool.get("description"):
        function["description"] = tool["description"]
    schema = tool.get("input_schema")
    # Anthropic-defined tools (bash, text editor, ...) have no schema in the request.
    function["parameters"] = (
        schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
    )
    return {"type": "function", "function": function}


# --------------------------------------------------------------------------------------------
# Response: OpenAI -> Anthropic
# --------------------------------------------------------------------------------------------


def finish_reason_to_stop_reason(finish_reason: str | None, has_tool_use: bool = False) -> str:
    """Map an OpenAI ``finish_reason`` to an Anthropic ``stop_reason``.

    Some compatible servers report ``stop`` even when the turn ended in tool calls; Anthropic
    agent loops key off ``stop_reason == "tool_use"``, so tool use wins over ``stop``/``None``.
    """
    if has_tool_use and finish_reason in (None, "stop"):
        return "tool_use"
    if finish_reason is None:
        return "end_turn"
    return _STOP_REASONS.get(finish_reason, "end_turn")


def _parse_arguments(arguments: object) -> dict[str, Any]:
    """Tool-call arguments as an Anthropic ``input`` object; ``{}`` if not a JSON object."""
    if isinstance(arguments, dict):
        return arguments
    if not isinstance(arguments, str) or not arguments.strip():
        return {}
    try:
        parsed = json.loads(arguments)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _message_text(message: dict[str, Any]) -> str:
    """Content plus refusal text; refusals are shown to the Anthropic client as text."""
    content = message.get("content")
    if isinstance(content, list):  # some servers return content parts
        content = "".join(
            p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    text = content if isinstance(content, str) else ""
    refusal = message.get("refusal")
    if isinstance(refusal, str):
        text += refusal
    return text


def openai_response_to_anthropic(resp: dict[str, Any], model: str | None = None) -> dict[str, Any]:
    """Translate a ``chat.completion`` into a Messages API response (choice 0 only)."""
    choices = resp.get("choices")
    choice = _as_dict(choices[0]) if isinstance(choices, list) and choices else {}
    message = _as_dict(choice.get("message"))
    content: list[dict[str, Any]] = []
    text = _message_text(message)
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict):
            continue
        function = _as_dict(call.get("function"))
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or _new_id("toolu_"),
                "name": function.get("name") or "",
                "input": _parse_arguments(function.get("arguments")),
            }
        )
    usage = _as_dict(resp.get("usage"))
    resp_id = resp.get("id")
    return {
        "id": f"msg_{resp_id}" if resp_id else _new_id("msg_"),
        "type": "message",
        "role": "assistant",
        "model": model or resp.get("model") or "",
        "content": content,
        "stop_reason": finish_reason_to_stop_reason(
            choice.get("finish_reason"), any(b["type"] == "tool_use" for b in content)
        ),
        "stop_sequence": None,
        "usage": {
            "input_tokens": usage.get("prompt_tokens") or 0,
            "output_tokens": usage.get("completion_tokens") or 0,
        },
    }


def openai_error_to_anthropic(status: int, body: dict[str, Any] | None) -> dict[str, Any]:
    """An upstream error (HTTP status + OpenAI-style error body) as an Anthropic error body.

    The message is taken from the shapes upstreams actually use: ``{"error": {"message"}}``
    (OpenAI), ``{"error": "..."}``, ``{"message": "..."}`` and ``{"detail": ...}`` (FastAPI).
    """
    message: object = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        if not message:
            message = body.get("message") or body.get("detail")
    if not message:
        message = f"Upstream returned HTTP {status}"
    elif not isinstance(message, str):
        message = orjson.dumps(message).decode()
    return {
        "type": "error",
        "error": {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
    }


def encode_anthropic_event(event_type: str, data: dict[str, Any]) -> bytes:
    """One Anthropic SSE event on the wire: ``event: X\\ndata: {json}\\n\\n``."""
    return b"event: " + event_type.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class _PendingToolCall:
    """A streamed tool call whose block cannot be opened yet (its name has not arrived)."""

    __slots__ = ("fragments", "id", "name")

    def __init__(self) -> None:
        self.id = ""
        self.name = ""
        self.fragments: list[str] = []


class OpenAIToAnthropicStream:
    """Converts a stream of OpenAI ``chat.completion.chunk`` dicts into Anthropic SSE events.

    Emits the event sequence the Anthropic SDK and Claude Code expect: ``message_start`` and
    ``ping``, then content blocks with consecutive indexes (a text block, then one
    ``tool_use`` block per tool call, each closed before the next opens), then
    ``message_delta`` and ``message_stop``. Only choice 0 is translated (an Anthropic message
    has one). Reasoning deltas are not forwarded, matching
    :func:`openai_response_to_anthropic`.

    Every method returns a list of ``(event_type, data)``; pass each to
    :func:`encode_anthropic_event` to get bytes. ``add`` emits the start events itself if
    ``start`` was not called, and ``finish`` is idempotent, so the output is always a
    well-formed stream.
    """

    def __init__(self, model: str, message_id: str | None = None, input_tokens: int = 0) -> None:
        self.model = model
        self.message_id = message_id or _new_id("msg_")
        self.input_tokens = input_tokens
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self._started = False
        self._finished = False
        self._next_index = 0
        self._open_index: int | None = None
        self._open_kind: str | None = None  # "text" or "tool_use"
        # OpenAI tool-call index -> Anthropic block index, for calls whose block was opened.
        self._tool_blocks: dict[int, int] = {}
        # Calls seen but not yet opened because their name has not arrived.
        self._tool_pending: dict[int, _PendingToolCall] = {}
        self._saw_tool_use = False

    def start(self) -> list[AnthropicEvent]:
        """``message_start`` (with the known input token count) and a ``ping``."""
        if self._started:
            return []
        self._started = True
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return [
            ("message_start", {"type": "message_start", "message": message}),
            ("ping", {"type": "ping"}),
        ]

    def add(self, chunk: dict[str, Any]) -> list[AnthropicEvent]:
        """Translate one chunk into the events it implies (often none, e.g. a role chunk)."""
        if self._finished:
            return []
        events = self.start()
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        error = chunk.get("error")
        if error is not None:
            # Some upstreams report mid-stream failures as a chunk with an ``error`` object.
            err = error if isinstance(error, dict) else {"message": str(error)}
            code = err.get("code")
            status = code if isinstance(code, int) else 500
            events.append(("error", openai_error_to_anthropic(status, {"error": err})))
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = _as_dict(choice.get("delta"))
            for key in ("content", "refusal"):
                text = delta.get(key)
                if isinstance(text, str) and text:
                    self._text(text, events)
            tool_calls = delta.get("tool_calls")
            if isinstance(tool_calls, list):
                for position, call in enumerate(tool_calls):
                    if isinstance(call, dict):
                        self._tool_call(call, position, events)
            finish_reason = choice.get("finish_reason")
            if isinstance(finish_reason, str) and finish_reason:
                self.finish_reason = finish_reason
        return events

    def finish(self) -> list[AnthropicEvent]:
        """Close the open block, then ``message_delta`` (stop reason, usage) and ``message_stop``.

        Tool calls whose name never arrived are still emitted (with an empty name) so their
        arguments are not lost.
        """
        if self._finished:
            return []
        events = self.start()
        for oai_index in sorted(self._tool_pending):
            self._open_tool(oai_index, events)
        self._close(events)
        self._finished = True
        usage: dict[str, Any] = {"output_tokens": 0}
        if self.usage is not None:
            usage["output_tokens"] = self.usage.get("completion_tokens") or 0
            if self.usage.get("prompt_tokens") is not None:
                # message_start had to guess; the final count lets clients correct it.
                usage["input_tokens"] = self.usage["prompt_tokens"]
        stop_reason = finish_reason_to_stop_reason(self.finish_reason, self._saw_tool_use)
        events.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                    "usage": usage,
                },
            )
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    # -- internals -------------------------------------------------------------------------

    def _close(self, events: list[AnthropicEvent]) -> None:
        if self._open_index is not None:
            events.append(
                ("content_block_stop", {"type": "content_block_stop", "index": self._open_index})
            )
            self._open_index = None
            self._open_kind = None

    def _open(self, block: dict[str, Any], kind: str, events: list[AnthropicEvent]) -> int:
        self._close(events)
        index = self._next_index
        self._next_index += 1
        self._open_index = index
        self._open_kind = kind
        events.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        )
        return index

    def _text(self, text: str, events: list[AnthropicEvent]) -> None:
        if self._open_kind != "text":
            self._open({"type": "text", "text": ""}, "text", events)
        events.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": self._open_index,
                    "delta": {"type": "text_delta", "text": text},
                },
            )
        )

    def _tool_call(self, call: dict[str, Any], position: int, events: list[AnthropicEvent]) -> None:
        oai_index = call.get("index")
        if not isinstance(oai_index, int):
            oai_index = self._infer_tool_index(call, position)
        function = _as_dict(call.get("function"))
        arguments = function.get("arguments")
        fragment = arguments if isinstance(arguments, str) else ""
        block_index = self._tool_blocks.get(oai_index)
        if block_index is not None:
            if fragment:
                # Normally the open block; a late fragment for an already-closed call is still
                # sent to its own index, where index-keyed consumers (the SDK) merge it.
                self._json_delta(block_index, fragment, events)
            return
        pending = self._tool_pending.get(oai_index)
        if pending is None:
            pending = self._tool_pending[oai_index] = _PendingToolCall()
        if isinstance(call.get("id"), str) and call["id"] and not pending.id:
            pending.id = call["id"]
        name = function.get("name")
        if isinstance(name, str) and name:
            pending.name += name
        if fragment:
            pending.fragments.append(fragment)
        if pending.name:
            # Open only once the name is known: content_block_start must carry it.
            self._open_tool(oai_index, events)

    def _infer_tool_index(self, call: dict[str, Any], position: int) -> int:
        """Index for servers that omit it: a new id starts a call, else continue the last."""
        known = list(self._tool_blocks) + list(self._tool_pending)
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            for idx, pending in self._tool_pending.items():
                if pending.id == call_id:
                    return idx
            return max(known, default=-1) + 1
        return max(known, default=position)

    def _open_tool(self, oai_index: int, events: list[AnthropicEvent]) -> None:
        pending = self._tool_pending.pop(oai_index)
        block = {
            "type": "tool_use",
            "id": pending.id or _new_id("toolu_"),
            "name": pending.name,
            "input": {},
        }
        block_index = self._open(block, "tool_use", events)
        self._tool_blocks[oai_index] = block_index
        self._saw_tool_use = True
        if pending.fragments:
            self._json_delta(block_index, "".join(pending.fragments), events)

    def _json_delta(self, index: int, fragment: str, events: list[AnthropicEvent]) -> None:
        events.append(
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": fragment},
                },
            )
        )
