"""A session's turns as one conversation: normalised messages and each turn's *next state*.

Why: a reply is judged by what happened after it — the user's next message or the results of the
tools it called — and the ledger stores turns, not conversations. The turn that continues turn t
is found by content, the way the proxy chains sessions: its request starts with t's messages plus
t's reply. The messages it adds after that reply (up to the next assistant message) are t's next
state. Both API families (OpenAI chat, Anthropic messages) are normalised to one small `Msg` so
the judge prompt and the implicit detectors see one shape.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

_WS = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Msg:
    """One message, provider-neutral. Tool results are `role="tool"` in both API families."""

    role: str  # system | user | assistant | tool
    text: str
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    is_error: bool = False  # Anthropic `tool_result.is_error`


@dataclass(frozen=True, slots=True)
class TurnRecord:
    """The columns of a `turns` row that scoring reads; timestamps are epoch seconds."""

    turn_id: str
    session_id: str
    ts_start: float
    ts_end: float | None = None
    turn_index: int | None = None
    request: dict[str, Any] | None = None
    completion_text: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    status: str | None = "ok"
    http_status: int | None = None
    error: str | None = None

    @property
    def done_at(self) -> float:
        return self.ts_end if self.ts_end is not None else self.ts_start

    @property
    def has_reply(self) -> bool:
        """A completed turn with something to judge (text or tool calls)."""
        return self.status == "ok" and bool((self.completion_text or "").strip() or self.tool_calls)


@dataclass(slots=True)
class TurnContext:
    """A turn placed in its conversation."""

    turn: TurnRecord
    messages: list[Msg]  # the request, normalised (system messages included)
    reply: Msg
    next_state: list[Msg] | None = None  # None: no later turn continues this one (yet)
    next_turn_id: str | None = None
    is_last: bool = False  # the session's latest turn
    position: int = 0  # 0-based order of the turn in its session

    @property
    def conversation(self) -> list[Msg]:
        return [m for m in self.messages if m.role != "system"]

    @property
    def system(self) -> str:
        return "\n\n".join(m.text for m in self.messages if m.role == "system" and m.text)

    @property
    def last_user_text(self) -> str:
        for msg in reversed(self.messages):
            if msg.role == "user":
                return msg.text
        return ""

    @property
    def next_user_text(self) -> str | None:
        """The user's words right after this turn (None when the next state has none)."""
        texts = [m.text for m in self.next_state or [] if m.role == "user" and m.text.strip()]
        return "\n".join(texts) if texts else None

    @property
    def next_tool_results(self) -> list[Msg]:
        return [m for m in self.next_state or [] if m.role == "tool"]


@dataclass(slots=True)
class Session:
    session_id: str
    turns: list[TurnContext] = field(default_factory=list)

    @property
    def last_activity(self) -> float:
        return max((c.turn.done_at for c in self.turns), default=0.0)

    def idle(self, now: float, idle_s: float) -> bool:
        return now - self.last_activity >= idle_s


# -- normalisation --------------------------------------------------------------------------


def _loads(value: Any) -> Any:
    if isinstance(value, str | bytes):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def _args_text(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS).decode()


def _openai_calls(calls: Any) -> tuple[ToolCall, ...]:
    out: list[ToolCall] = []
    for call in calls if isinstance(calls, list) else []:
        if not isinstance(call, dict):
            continue
        fn = fn if isinstance(fn := call.get("function"), dict) else {}
        out.append(ToolCall(str(fn.get("name") or ""), _args_text(fn.get("arguments") or "")))
    return tuple(out)


def _block_text(content: Any) -> str:
    """Text of a content value: a string, or the text of its parts (images as placeholders)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict):
                kind = part.get("type")
                if kind in ("text", "input_text", "output_text"):
                    parts.append(str(part.get("text") or ""))
                elif kind in ("image", "image_url", "input_image"):
                    parts.append("[image]")
                elif kind == "tool_result":
                    parts.append(_block_text(part.get("content")))
        return "".join(parts)
    return str(content)


def _anthropic_message(role: str, content: list[Any]) -> list[Msg]:
    """An Anthropic message with content blocks: tool results become `tool` messages."""
    out: list[Msg] = []
    texts: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "tool_result":
            out.append(
                Msg(
                    "tool",
                    _block_text(block.get("content")),
                    tool_call_id=block.get("tool_use_id"),
                    is_error=bool(block.get("is_error")),
                )
            )
        elif kind == "tool_use":
            calls.append(ToolCall(str(block.get("name") or ""), _args_text(block.get("input"))))
        elif kind in ("thinking", "redacted_thinking"):
            continue  # not part of the reply the ledger stores; kept out so chaining matches
        else:
            texts.append(_block_text([block]))
    if texts or calls or not out:
        out.append(Msg(role, "".join(texts), tuple(calls)))
    return out


def normalize_message(msg: Any) -> list[Msg]:
    """One request message → zero or more `Msg` (an Anthropic user turn may hold tool results)."""
    if not isinstance(msg, dict):
        return []
    role = msg.get("role")
    content = msg.get("content")
    if role in ("system", "developer"):
        return [Msg("system", _block_text(content))]
    if role in ("tool", "function"):
        return [Msg("tool", _block_text(content), tool_call_id=msg.get("tool_call_id"))]
    if role not in ("user", "assistant"):
        return []
    if isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") in ("tool_use", "tool_result") for b in content
    ):
        return _anthropic_message(role, content)
    return [Msg(role, _block_text(content), _openai_calls(msg.get("tool_calls")))]


def normalize_request(request: Any) -> list[Msg]:
    """The messages of a stored request (either API family), system prompt first."""
    request = _loads(request)
    if not isinstance(request, dict):
        return []
    out: list[Msg] = []
    system = request.get("system")  # Anthropic
    if system:
        out.append(Msg("system", _block_text(system)))
    for msg in request.get("messages") or []:
        out.extend(normalize_message(msg))
    return out


def reply_message(turn: TurnRecord) -> Msg:
    """The assistant message the turn produced (OpenAI-shaped `tool_calls` in the ledger)."""
    return Msg("assistant", turn.completion_text or "", _openai_calls(_loads(turn.tool_calls)))


# -- chaining -------------------------------------------------------------------------------


def _key(msg: Msg) -> bytes:
    """What must match for two messages to be "the same": clients re-serialise whitespace and
    tool arguments, so only the role, collapsed text and tool names are compared."""
    names = [c.name for c in msg.tool_calls]
    return orjson.dumps([msg.role, _WS.sub(" ", msg.text).strip(), names])


def _running_digests(messages: Iterable[Msg]) -> list[bytes]:
    """digest of messages[:k+1] for every k, in one pass."""
    out: list[bytes] = []
    running = b""
    for msg in messages:
        running = hashlib.blake2b(running + _key(msg), digest_size=16).digest()
        out.append(running)
    return out


def _until_assistant(messages: list[Msg]) -> list[Msg]:
    for i, msg in enumerate(messages):
        if msg.role == "assistant":
            return messages[:i]
    return messages


def assemble(session_id: str, turns: Iterable[TurnRecord]) -> Session:
    """Order a session's turns and attach each one's next state.

    The continuation of turn t is the earliest later turn whose conversation begins with t's
    conversation plus t's reply. When content does not match (a client that rewrites history),
    a positional fallback applies: the next turn index, the same role sequence, and an assistant
    message where t's reply should be.
    """
    ordered = sorted(turns, key=lambda t: (t.ts_start, t.turn_id))
    contexts = [
        TurnContext(
            turn=t, messages=normalize_request(t.request), reply=reply_message(t), position=i
        )
        for i, t in enumerate(ordered)
    ]
    if contexts:
        contexts[-1].is_last = True
    convos = [c.conversation for c in contexts]
    produced: dict[bytes, int] = {}
    for i, ctx in enumerate(contexts):
        if ctx.turn.status == "ok":
            produced.setdefault(_running_digests([*convos[i], ctx.reply])[-1], i)
    for j, convo in enumerate(convos):
        for k, digest in enumerate(_running_digests(convo), start=1):
            if convo[k - 1].role != "assistant":
                continue
            src = produced.get(digest)
            if src is None or src >= j or contexts[src].next_state is not None:
                continue
            state = _until_assistant(convo[k:])
            if state:
                contexts[src].next_state = state
                contexts[src].next_turn_id = contexts[j].turn.turn_id
    _positional_fallback(contexts, convos)
    return Session(session_id, contexts)


def _positional_fallback(contexts: list[TurnContext], convos: list[list[Msg]]) -> None:
    for i, ctx in enumerate(contexts):
        t = ctx.turn
        if ctx.next_state is not None or t.status != "ok" or t.turn_index is None:
            continue
        n = len(convos[i])
        roles = [m.role for m in convos[i]]
        for j in range(i + 1, len(contexts)):
            u = contexts[j].turn
            if u.turn_index == t.turn_index and u.status == "ok":
                break  # a retry of the same turn superseded t; it owns the continuation
            if u.turn_index != t.turn_index + 1 or len(convos[j]) <= n + 1:
                continue
            if [m.role for m in convos[j][:n]] != roles or convos[j][n].role != "assistant":
                continue
            state = _until_assistant(convos[j][n + 1 :])
            if state:
                ctx.next_state = state
                ctx.next_turn_id = u.turn_id
            break
