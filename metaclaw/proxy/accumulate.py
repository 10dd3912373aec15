"""Rebuild the final response object from a streamed response.

The proxy records every turn in one shape no matter whether the client asked for a stream, so a
streamed turn has to be folded back into what the upstream would have returned without
streaming. The accumulators here do that incrementally, chunk by chunk, while the stream is
being forwarded, and expose the few facts the proxy needs *during* the stream (text so far,
whether the first token has arrived for time-to-first-token) as cheap properties.

Both accumulators are tolerant: missing fields, unknown event or delta types and out-of-order
fragments are absorbed rather than raised, because a recorder must never break the stream it
is recording.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["AnthropicStreamAccumulator", "OpenAIStreamAccumulator"]


def _as_dict(value: object) -> dict[str, Any]:
    """Treat anything that is not a dict (None, a list, a string) as an empty dict."""
    return value if isinstance(value, dict) else {}


def _joined(parts: list[str]) -> str:
    """Join streamed fragments, collapsing the list so repeated reads stay cheap."""
    if len(parts) > 1:
        parts[:] = ["".join(parts)]
    return parts[0] if parts else ""


# --------------------------------------------------------------------------------------------
# OpenAI Chat Completions
# --------------------------------------------------------------------------------------------


class _ToolCallState:
    """Fragments of one streamed tool call, merged by its ``index``."""

    __slots__ = ("args", "id", "name", "type")

    def __init__(self) -> None:
        self.id: str | None = None
        self.type = "function"
        self.name = ""
        self.args: list[str] = []

    def add(self, delta: dict[str, Any]) -> None:
        tc_id = delta.get("id")
        if isinstance(tc_id, str) and tc_id and self.id is None:
            # Some servers repeat the id on every fragment; the first one wins.
            self.id = tc_id
        tc_type = delta.get("type")
        if isinstance(tc_type, str) and tc_type:
            self.type = tc_type
        function = _as_dict(delta.get("function"))
        name = function.get("name")
        # OpenAI sends the name once; some compatible servers repeat the whole name on every
        # fragment. Concatenate genuine fragments, ignore exact repeats.
        if isinstance(name, str) and name and name != self.name:
            self.name += name
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            self.args.append(arguments)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id or "",
            "type": self.type,
            "function": {"name": self.name, "arguments": "".join(self.args)},
        }


class _ChoiceState:
    """Everything streamed for one ``choices[i]``."""

    __slots__ = (
        "content",
        "content_seen",
        "finish_reason",
        "logprobs",
        "reasoning",
        "refusal",
        "role",
        "tool_calls",
    )

    def __init__(self) -> None:
        self.role = "assistant"
        self.content: list[str] = []
        # Distinguishes "content was a string (maybe empty)" from "content was always null":
        # non-streaming tool-call responses have ``content: null`` and we reproduce that.
        self.content_seen = False
        self.refusal: list[str] | None = None
        self.reasoning: list[str] | None = None
        self.tool_calls: dict[int, _ToolCallState] = {}
        self.finish_reason: str | None = None
        self.logprobs: dict[str, list[Any]] | None = None

    def add(self, choice: dict[str, Any]) -> bool:
        """Merge one streamed choice; return True when it carried generated output."""
        produced = False
        delta = _as_dict(choice.get("delta"))
        role = delta.get("role")
        if isinstance(role, str) and role:
            self.role = role
        content = delta.get("content")
        if isinstance(content, str):
            self.content_seen = True
            if content:
                self.content.append(content)
                produced = True
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            if self.refusal is None:
                self.refusal = []
            self.refusal.append(refusal)
            produced = True
        # vLLM/SGLang/DeepSeek stream reasoning separately; it is output, so it counts for TTFT.
        reasoning = delta.get("reasoning_content")
        if not isinstance(reasoning, str):
            reasoning = delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            if self.reasoning is None:
                self.reasoning = []
            self.reasoning.append(reasoning)
            produced = True
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            for tc in tool_calls:
                if isinstance(tc, dict):
                    self._tool_call(tc).add(tc)
                    produced = True
        finish_reason = choice.get("finish_reason")
        if isinstance(finish_reason, str) and finish_reason:
            self.finish_reason = finish_reason
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            for key in ("content", "refusal"):
                items = logprobs.get(key)
                if isinstance(items, list) and items:
                    if self.logprobs is None:
                        self.logprobs = {}
                    self.logprobs.setdefault(key, []).extend(items)
        return produced

    def _tool_call(self, tc: dict[str, Any]) -> _ToolCallState:
        index = tc.get("index")
        if not isinstance(index, int):
            # Some compatible servers omit ``index``. A fragment with an unseen id starts a new
            # call; anything else continues the most recent one.
            tc_id = tc.get("id")
            known = {state.id: i for i, state in self.tool_calls.items()}
            if isinstance(tc_id, str) and tc_id and tc_id in known:
                index = known[tc_id]
            elif (isinstance(tc_id, str) and tc_id) or not self.tool_calls:
                index = max(self.tool_calls, default=-1) + 1
            else:
                index = max(self.tool_calls)
        state = self.tool_calls.get(index)
        if state is None:
            state = self.tool_calls[index] = _ToolCallState()
        return state

    @property
    def text(self) -> str:
        return _joined(self.content)

    def tool_call_dicts(self) -> list[dict[str, Any]]:
        return [self.tool_calls[i].to_dict() for i in sorted(self.tool_calls)]

    def to_dict(self, index: int) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": self.role,
            "content": self.text if self.content_seen or self.content else None,
        }
        if self.refusal is not None:
            message["refusal"] = "".join(self.refusal)
        if self.reasoning is not None:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = self.tool_call_dicts()
        out: dict[str, Any] = {
            "index": index,
            "message": message,
            "finish_reason": self.finish_reason,
        }
        if self.logprobs is not None:
            out["logprobs"] = self.logprobs
        return out


class OpenAIStreamAccumulator:
    """Feed parsed ``chat.completion.chunk`` dicts; builds the equivalent ``chat.completion``.

    The convenience properties describe choice 0 (the only one a normal chat turn has);
    :meth:`result` builds every choice that was streamed. ``result()`` can be called at any
    time (e.g. when the stream breaks) and does not disturb further ``add`` calls.
    """

    def __init__(self) -> None:
        self.id: str | None = None
        self.created: int | None = None
        self.model: str | None = None
        self.system_fingerprint: str | None = None
        self.service_tier: str | None = None
        self.usage: dict[str, Any] | None = None
        self.first_content_seen = False
        self._choices: dict[int, _ChoiceState] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        """Merge one chunk (the JSON of one ``data:`` line, ``[DONE]`` excluded)."""
        if self.id is None and isinstance(chunk.get("id"), str) and chunk["id"]:
            self.id = chunk["id"]
        if self.created is None and isinstance(chunk.get("created"), int):
            self.created = chunk["created"]
        if self.model is None and isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        if isinstance(chunk.get("system_fingerprint"), str):
            self.system_fingerprint = chunk["system_fingerprint"]
        if isinstance(chunk.get("service_tier"), str):
            self.service_tier = chunk["service_tier"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            # Usually only the final (``choices: []``) chunk has it; servers that report running
            # totals on every chunk are handled by keeping the latest.
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            return
        for choice in choices:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index")
            if not isinstance(index, int):
                index = 0
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = _ChoiceState()
            if state.add(choice):
                self.first_content_seen = True

    @property
    def text(self) -> str:
        """Content of choice 0 so far."""
        state = self._choices.get(0)
        return state.text if state is not None else ""

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """Merged tool calls of choice 0, ordered by their stream index."""
        state = self._choices.get(0)
        return state.tool_call_dicts() if state is not None else []

    @property
    def finish_reason(self) -> str | None:
        """Finish reason of choice 0; ``None`` until the final chunk (or if it never came)."""
        state = self._choices.get(0)
        return state.finish_reason if state is not None else None

    def result(self) -> dict[str, Any]:
        """The non-streaming ``chat.completion`` equivalent of everything added so far.

        Missing top-level fields become ``""``/``0`` (not ``None``) so the dict validates as an
        OpenAI ``ChatCompletion``; a stream with no choices still yields an empty choice 0 so
        callers can always read ``choices[0]``.
        """
        choices = self._choices or {0: _ChoiceState()}
        out: dict[str, Any] = {
            "id": self.id or "",
            "object": "chat.completion",
            "created": self.created or 0,
            "model": self.model or "",
            "choices": [choices[i].to_dict(i) for i in sorted(choices)],
            "usage": self.usage,
        }
        if self.system_fingerprint is not None:
            out["system_fingerprint"] = self.system_fingerprint
        if self.service_tier is not None:
            out["service_tier"] = self.service_tier
        return out


# --------------------------------------------------------------------------------------------
# Anthropic Messages
# --------------------------------------------------------------------------------------------

# Block types whose ``input`` arrives as ``input_json_delta`` fragments.
_JSON_INPUT_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


class _BlockState:
    """One content block being streamed."""

    __slots__ = ("block", "json_dirty", "json_parts", "parts", "stopped")

    def __init__(self, block: dict[str, Any]) -> None:
        self.block = dict(block)
        kind = self.block.get("type")
        # Text-like blocks accumulate in a list and are joined once, at read time.
        self.parts: list[str] = []
        if kind == "text":
            self.parts.append(self.block.get("text") or "")
        elif kind == "thinking":
            self.parts.append(self.block.get("thinking") or "")
        self.json_parts: list[str] = []
        self.json_dirty = False
        self.stopped = False

    @property
    def kind(self) -> object:
        return self.block.get("type")

    def finalize_input(self) -> None:
        """Parse the joined ``partial_json`` into ``input``.

        Empty means "no arguments" (``{}``, or whatever ``content_block_start`` gave); text that
        is not valid JSON is kept verbatim, because a recorder must keep what the model said.
        """
        if not self.json_dirty:
            return
        self.json_dirty = False
        raw = "".join(self.json_parts)
        if not raw.strip():
            if not isinstance(self.block.get("input"), dict):
                self.block["input"] = {}
            return
        try:
            self.block["input"] = json.loads(raw)
        except ValueError:
            self.block["input"] = raw

    def to_dict(self) -> dict[str, Any]:
        kind = self.kind
        if kind == "text":
            self.block["text"] = _joined(self.parts)
        elif kind == "thinking":
            self.block["thinking"] = _joined(self.parts)
        elif kind in _JSON_INPUT_BLOCKS:
            self.finalize_input()
            if "input" not in self.block:
                self.block["input"] = {}
        return dict(self.block)


class AnthropicStreamAccumulator:
    """Feed ``(event_type, data)`` from an Anthropic Messages SSE stream; builds the message.

    ``result()`` can be called at any time, including after a stream that broke before
    ``message_stop``: blocks that never got ``content_block_stop`` are finalized the same way.
    """

    def __init__(self) -> None:
        self.id: str | None = None
        self.model: str | None = None
        self.role = "assistant"
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        """The ``error`` event's ``error`` object, when the stream reported one."""
        self.first_content_seen = False
        self._extra: dict[str, Any] = {}
        self._blocks: dict[int, _BlockState] = {}

    def add(self, event_type: str, data: dict[str, Any]) -> None:
        """Merge one event. ``event_type`` wins over ``data["type"]`` when both are present."""
        kind = event_type or data.get("type")
        if kind == "content_block_delta":
            self._delta(data)
        elif kind == "content_block_start":
            self._start_block(data)
        elif kind == "content_block_stop":
            state = self._blocks.get(_index(data))
            if state is not None:
                state.stopped = True
                state.finalize_input()
        elif kind == "message_start":
            self._message_start(_as_dict(data.get("message")))
        elif kind == "message_delta":
            delta = _as_dict(data.get("delta"))
            if "stop_reason" in delta:
                self.stop_reason = delta["stop_reason"]
            if "stop_sequence" in delta:
                self.stop_sequence = delta["stop_sequence"]
            self._merge_usage(data.get("usage"))
        elif kind == "error":
            self.error = _as_dict(data.get("error")) or dict(data)
        # ping, message_stop and unknown events carry nothing to keep.

    def _message_start(self, message: dict[str, Any]) -> None:
        if isinstance(message.get("id"), str):
            self.id = message["id"]
        if isinstance(message.get("model"), str):
            self.model = message["model"]
        if isinstance(message.get("role"), str):
            self.role = message["role"]
        if message.get("stop_reason") is not None:
            self.stop_reason = message["stop_reason"]
        if message.get("stop_sequence") is not None:
            self.stop_sequence = message["stop_sequence"]
        for key in ("container", "context_management"):
            if message.get(key) is not None:
                self._extra[key] = message[key]
        self._merge_usage(message.get("usage"))
        # Some gateways put content in message_start; keep it as already-complete blocks.
        content = message.get("content")
        if isinstance(content, list):
            for i, block in enumerate(content):
                if isinstance(block, dict) and i not in self._blocks:
                    self._blocks[i] = _BlockState(block)

    def _merge_usage(self, usage: object) -> None:
        """message_start has input counts, message_delta the (cumulative) output counts.

        Later non-null values win, matching the official SDK's accumulation.
        """
        if not isinstance(usage, dict):
            return
        if self.usage is None:
            self.usage = {}
        for key, value in usage.items():
            if value is not None:
                self.usage[key] = value

    def _start_block(self, data: dict[str, Any]) -> None:
        block = _as_dict(data.get("content_block"))
        state = _BlockState(block)
        self._blocks[_index(data)] = state
        if (
            state.kind in _JSON_INPUT_BLOCKS
            or state.kind == "redacted_thinking"
            or (state.kind in ("text", "thinking") and state.parts[0])
        ):
            self.first_content_seen = True

    def _delta(self, data: dict[str, Any]) -> None:
        index = _index(data)
        state = self._blocks.get(index)
        delta = _as_dict(data.get("delta"))
        dtype = delta.get("type")
        if state is None:
            # Delta without a start: infer the block so the content is not lost.
            if dtype == "text_delta":
                state = _BlockState({"type": "text", "text": ""})
            elif dtype in ("thinking_delta", "signature_delta"):
                state = _BlockState({"type": "thinking", "thinking": "", "signature": ""})
            elif dtype == "input_json_delta":
                state = _BlockState({"type": "tool_use", "id": "", "name": "", "input": {}})
            else:
                return
            self._blocks[index] = state
        if dtype == "text_delta":
            text = delta.get("text")
            if isinstance(text, str) and text:
                state.parts.append(text)
                self.first_content_seen = True
        elif dtype == "input_json_delta":
            partial = delta.get("partial_json")
            if isinstance(partial, str):
                state.json_parts.append(partial)
                state.json_dirty = True
                self.first_content_seen = True
        elif dtype == "thinking_delta":
            thinking = delta.get("thinking")
            if isinstance(thinking, str) and thinking:
                state.parts.append(thinking)
                self.first_content_seen = True
        elif dtype == "signature_delta":
            # The signature is sent whole, once; the official SDK assigns rather than appends.
            state.block["signature"] = delta.get("signature", "")
        elif dtype == "citations_delta":
            citation = delta.get("citation")
            if citation is not None:
                citations = state.block.get("citations")
                if not isinstance(citations, list):
                    citations = state.block["citations"] = []
                citations.append(citation)

    def _ordered(self) -> list[_BlockState]:
        return [self._blocks[i] for i in sorted(self._blocks)]

    @property
    def text(self) -> str:
        """All text blocks so far, joined by newlines as the next request re-sends them
        (`anthropic_compat`), so the recorded reply and the session chain agree."""
        texts = (_joined(s.parts) for s in self._ordered() if s.kind == "text")
        return "\n".join(t for t in texts if t)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """``tool_use`` blocks as OpenAI-style tool calls, in block order.

        ``arguments`` is the JSON text exactly as streamed when there were fragments (so an
        invalid payload is preserved), otherwise the JSON encoding of the block's ``input``.
        """
        calls: list[dict[str, Any]] = []
        for state in self._ordered():
            if state.kind != "tool_use":
                continue
            if state.json_parts:
                arguments = "".join(state.json_parts)
            else:
                block_input = state.block.get("input")
                arguments = json.dumps(block_input if block_input is not None else {})
            calls.append(
                {
                    "id": state.block.get("id") or "",
                    "type": "function",
                    "function": {"name": state.block.get("name") or "", "arguments": arguments},
                }
            )
        return calls

    @property
    def finish_reason(self) -> str | None:
        """The Anthropic ``stop_reason`` (named like the OpenAI accumulator's property)."""
        return self.stop_reason

    def result(self) -> dict[str, Any]:
        """The non-streaming Messages API response equivalent of everything added so far."""
        usage = dict(self.usage) if self.usage is not None else {}
        usage.setdefault("input_tokens", 0)
        usage.setdefault("output_tokens", 0)
        out: dict[str, Any] = {
            "id": self.id or "",
            "type": "message",
            "role": self.role,
            "model": self.model or "",
            "content": [s.to_dict() for s in self._ordered()],
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": usage,
        }
        out.update(self._extra)
        return out


def _index(data: dict[str, Any]) -> int:
    index = data.get("index")
    return index if isinstance(index, int) else 0
