"""Session identity for stock clients that send no session header (DESIGN.md, proxy rules).

Order: `X-Session-Id` header, `prompt_cache_key` (OpenClaw sends `<sessionId>:<n>`), the `user`
field, else a hash chain: a request whose earlier messages equal a previous turn's messages plus
its reply continues that turn's session. Hashes are taken over a normalised form (role, text,
tool calls) without system messages, so clients that re-serialise history or refresh a timestamp
in their system prompt still chain.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

_CACHE_KEY_SUFFIX = re.compile(r":\d+$")
Message = dict[str, Any]


def explicit_session_id(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The session id the client told us, by the precedence rule; None when it said nothing."""
    header = headers.get("x-session-id")
    if header and header.strip():
        return header.strip()
    cache_key = body.get("prompt_cache_key")
    if isinstance(cache_key, str) and cache_key.strip():
        return _CACHE_KEY_SUFFIX.sub("", cache_key.strip())
    user = body.get("user")
    if isinstance(user, str) and user.strip():
        return user.strip()
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        user_id = metadata.get("user_id")
        if isinstance(user_id, str) and user_id.strip():
            return user_id.strip()
    return None


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return str(content)


def _arguments(arguments: Any) -> Any:
    """Tool arguments compared by value: clients re-serialise JSON with other spacing."""
    if isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            return arguments
    return orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS).decode()


def _normalise(msg: Message) -> bytes:
    calls = [
        (c.get("function", {}).get("name"), _arguments(c.get("function", {}).get("arguments")))
        for c in msg.get("tool_calls") or []
        if isinstance(c, dict)
    ]
    return orjson.dumps(
        [msg.get("role"), _text(msg.get("content")).strip(), calls, msg.get("tool_call_id")]
    )


def prefix_digests(messages: list[Message]) -> Iterator[tuple[int, bytes]]:
    """(k, digest of messages[:k]) for every k, in one pass (a running hash, not O(n²))."""
    running = b""
    for k, msg in enumerate(messages, start=1):
        if msg.get("role") in ("system", "developer"):
            continue
        running = hashlib.blake2b(running + _normalise(msg), digest_size=16).digest()
        yield k, running


class SessionTracker:
    """Remembers the digest of each finished conversation (request + reply) → session id."""

    def __init__(self, max_size: int = 100_000) -> None:
        self.max_size = max_size
        self._sessions: OrderedDict[bytes, str] = OrderedDict()

    def resolve(self, explicit: str | None, messages: list[Message]) -> str:
        if explicit:
            return explicit
        candidates = [
            digest
            for k, digest in prefix_digests(messages)
            if messages[k - 1].get("role") == "assistant"
        ]
        for digest in reversed(candidates):
            session = self._sessions.get(digest)
            if session is not None:
                self._sessions.move_to_end(digest)
                return session
        return f"sess-{uuid.uuid4().hex}"

    def remember(self, messages: list[Message], reply: Message, session_id: str) -> None:
        last = None
        for _, digest in prefix_digests([*messages, reply]):
            last = digest
        if last is None:
            return
        self._sessions[last] = session_id
        self._sessions.move_to_end(last)
        while len(self._sessions) > self.max_size:
            self._sessions.popitem(last=False)


def turn_index(messages: list[Message]) -> int:
    """Position of this turn in its session: the number of assistant replies before it."""
    return sum(1 for m in messages if m.get("role") == "assistant")
