"""Session identity for stock clients that send no session header.

The contract: docs/architecture.md, "Proxy rules".

Order: `X-Session-Id` header, `prompt_cache_key` (OpenClaw sends `<sessionId>:<n>`), the `user`
field, else a hash chain: a request whose earlier messages equal a previous turn's messages plus
its reply continues that turn's session.

The chain's digests start from a seed of the client's identity (a hash of the API key it
presented) and its system prompt, so two agents that open with the same words and get the same
reply stay apart. The system prompt is compared without digits (clients refresh a timestamp or
a counter in it every turn); all texts are compared without whitespace (clients re-join
Anthropic text blocks with newlines, or re-indent). The chain lives in
a small SQLite file under METACLAW_HOME (WAL mode), with an in-memory LRU in front, so a
restarted proxy, or a second proxy process on the same home, continues running sessions; a
write never waits for another process's lock on the event loop (`ChainStore`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("metaclaw.proxy")
SESSIONS_FILE = "proxy-sessions.sqlite"
_CACHE_KEY_SUFFIX = re.compile(r":\d+$")
_DIGITS = re.compile(r"\d+")
_PRUNE_EVERY = 1024  # writes between trims of the SQLite table to `max_size` rows
Message = dict[str, Any]


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a client sent: `Authorization: Bearer …` (OpenAI, new Anthropic SDKs) or
    `x-api-key` (Anthropic)."""
    auth = headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key")


def client_identity(headers: Mapping[str, str]) -> str:
    """Who is calling, as far as the chain needs to know: a hash of the presented key ("")."""
    key = presented_key(headers)
    return hashlib.blake2b(key.encode(), digest_size=8).hexdigest() if key else ""


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


def _squeeze(text: str) -> str:
    """Text without whitespace: how the chain compares texts (see the module docstring)."""
    return "".join(text.split())


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
        [msg.get("role"), _squeeze(_text(msg.get("content"))), calls, msg.get("tool_call_id")]
    )


def chain_seed(messages: list[Message], identity: str) -> bytes:
    """Where a conversation's chain starts: the client and its system prompt (digits aside)."""
    system = "".join(
        _text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")
    )
    material = orjson.dumps([identity, _squeeze(_DIGITS.sub("", system))])
    return hashlib.blake2b(material, digest_size=16).digest()


def prefix_digests(messages: list[Message], identity: str = "") -> Iterator[tuple[int, bytes]]:
    """(k, digest of messages[:k]) for every k, in one pass (a running hash, not O(n²))."""
    running = chain_seed(messages, identity)
    for k, msg in enumerate(messages, start=1):
        if msg.get("role") in ("system", "developer"):
            continue
        running = hashlib.blake2b(running + _normalise(msg), digest_size=16).digest()
        yield k, running


class ChainStore:
    """digest → session id in SQLite, shared by every proxy process on one METACLAW_HOME.

    The event loop looks links up (in WAL mode a read never waits for a writer) and writes them
    when nobody else is writing: its connection never waits for a lock, so it costs one INSERT
    (~60 µs). When another process holds the write lock, the write goes to the store's own
    thread, which waits for the lock up to the busy timeout while the loop keeps serving; so
    do the periodic trim and WAL checkpoint. Failures (a lock held too long, a full disk) are
    logged and the chain degrades to memory: session identity is a convenience, serving must
    not fail on it.
    """

    def __init__(self, path: Path, max_size: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_size = max_size
        self._writes = 0
        # set up by the thread's connection, patient at start: workers start together
        self._writer = _connect(path, timeout=_SETUP_WAIT_S)
        self._writer.execute("PRAGMA journal_mode=WAL")
        self._writer.execute(
            "CREATE TABLE IF NOT EXISTS chain (digest BLOB PRIMARY KEY, "
            "session TEXT NOT NULL, seen INTEGER NOT NULL)"
        )
        self._writer.execute("CREATE INDEX IF NOT EXISTS chain_seen ON chain (seen)")
        self._writer.execute(f"PRAGMA busy_timeout={_WRITE_WAIT_MS}")
        self._db = _connect(path, timeout=0)  # the event loop's: never waits for a lock
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on the thread
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="metaclaw-chain")

    def find(self, digests: list[bytes]) -> dict[bytes, str]:
        try:
            marks = ",".join("?" * len(digests))
            found = self._db.execute(
                f"SELECT digest, session FROM chain WHERE digest IN ({marks})", digests
            ).fetchall()
        except sqlite3.Error as exc:
            log.warning("session chain lookup failed (%s); using memory only", exc)
            return {}
        return {bytes(d): s for d, s in found}

    def put(self, digest: bytes, session_id: str) -> Future[None] | None:
        """Store a link. None: it is stored (or failed, logged); a future: it is being written
        on the store's thread, and is visible to other processes once that resolves."""
        self._writes += 1
        if self._writes % _PRUNE_EVERY:
            try:
                self._db.execute(_INSERT, (digest, session_id, time.time_ns()))
                return None
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    log.warning("session chain write failed (%s); using memory only", exc)
                    return None
            except sqlite3.Error as exc:
                log.warning("session chain write failed (%s); using memory only", exc)
                return None
        try:
            return self._pool.submit(self._put, digest, session_id, self._writes)
        except RuntimeError:  # shut down: the proxy is stopping
            return None

    def _put(self, digest: bytes, session_id: str, count: int) -> None:
        try:
            self._writer.execute(_INSERT, (digest, session_id, time.time_ns()))
            if count % _PRUNE_EVERY == 0:
                self._writer.execute(
                    "DELETE FROM chain WHERE seen < (SELECT seen FROM chain ORDER BY seen DESC "
                    "LIMIT 1 OFFSET ?)",
                    (self.max_size - 1,),
                )
                self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.warning("session chain write failed (%s); using memory only", exc)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._writer.close()
        self._db.close()


_INSERT = "INSERT OR REPLACE INTO chain VALUES (?, ?, ?)"
_SETUP_WAIT_S = 10.0  # creating the file and table, once per process start
_WRITE_WAIT_MS = 250  # another process holds the write lock for microseconds; never wait long


def _connect(path: Path, timeout: float) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    # no fsync: a crash of the process loses nothing (the OS has the pages); a power cut may
    # lose the last links, which only splits a session
    db.execute("PRAGMA synchronous=OFF")
    return db


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Another connection holds the write lock (SQLITE_BUSY / SQLITE_LOCKED)."""
    return exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SessionTracker:
    """Remembers the digest of each finished conversation (request + reply) → session id."""

    def __init__(self, max_size: int = 100_000, path: Path | None = None) -> None:
        self.max_size = max_size
        self._sessions: OrderedDict[bytes, str] = OrderedDict()
        self._store = ChainStore(path, max_size) if path is not None else None

    def resolve(self, explicit: str | None, messages: list[Message], identity: str = "") -> str:
        if explicit:
            return explicit
        candidates = [
            digest
            for k, digest in prefix_digests(messages, identity)
            if messages[k - 1].get("role") == "assistant"
        ]
        for digest in reversed(candidates):
            session = self._sessions.get(digest)
            if session is not None:
                self._sessions.move_to_end(digest)
                return session
        if candidates and self._store is not None:  # another process, or before a restart
            stored = self._store.find(candidates)
            for digest in reversed(candidates):
                if digest in stored:
                    self._cache(digest, stored[digest])
                    return stored[digest]
        return f"sess-{uuid.uuid4().hex}"

    def remember(
        self, messages: list[Message], reply: Message, session_id: str, identity: str = ""
    ) -> Future[None] | None:
        """Link the conversation so far to its session: in this process at once; the returned
        future resolves once the link is in the shared store too (None: nothing to wait for)."""
        last = None
        for _, digest in prefix_digests([*messages, reply], identity):
            last = digest
        if last is None:
            return None
        self._cache(last, session_id)
        return self._store.put(last, session_id) if self._store is not None else None

    def _cache(self, digest: bytes, session_id: str) -> None:
        self._sessions[digest] = session_id
        self._sessions.move_to_end(digest)
        while len(self._sessions) > self.max_size:
            self._sessions.popitem(last=False)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def turn_index(messages: list[Message]) -> int:
    """Position of this turn in its session: the number of assistant replies before it."""
    return sum(1 for m in messages if m.get("role") == "assistant")
