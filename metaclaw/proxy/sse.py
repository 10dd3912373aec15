"""Incremental Server-Sent-Events parser for the proxy's streaming hot path.

The proxy has to do two things with an upstream SSE stream at once: forward it to the client
byte-for-byte (so the client sees exactly what the upstream sent) and understand it (so every
turn can be recorded). :class:`SSEParser` therefore returns events that carry both their parsed
fields *and* the exact bytes they were made of.

Guarantees, whatever the chunking of the input:

* The concatenation of ``raw`` over every returned event (``feed`` calls, then ``flush``) is
  exactly the concatenation of the fed chunks: nothing is dropped, reordered or rewritten.
* Each event's ``raw`` is the same bytes it would be if the whole stream were fed in one go, so
  records do not depend on how the network happened to split the stream.

Parsing follows the WHATWG ``text/event-stream`` rules: lines end with ``\\r\\n``, ``\\n`` or
``\\r``; a blank line ends an event; ``:`` starts a comment; one space after the field colon is
dropped; ``data`` lines are joined with ``\\n``. Two deliberate departures, both because a proxy
must forward what it cannot interpret:

* Blocks with no ``data`` line (comment-only keep-alives such as ``: ping``, or a bare
  ``event:``) are still returned, with ``data == ""``, so they can be forwarded. Callers that
  only want payloads skip events whose ``data`` is empty.
* Blank lines that do not end an event (a stray ``\\n`` between events) are not events of their
  own; their bytes are prepended to the next event's ``raw``.

Cost is linear in the input: each byte is examined by C-level scans a bounded number of times
(a line that arrives in many small pieces is joined once, when its terminator arrives) and the
Python-level work is per line, not per byte.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEEvent", "SSEParser"]

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One event block of an SSE stream.

    ``raw`` is what the proxy forwards; ``event``/``data`` are what it records.
    """

    raw: bytes
    """Exact bytes of the block, including its terminating blank line (if it had one)."""
    event: str | None
    """Value of the ``event:`` field; ``None`` when the block had none."""
    data: str
    """The ``data:`` lines joined with ``"\\n"``; ``""`` when the block had none."""


class SSEParser:
    """Turns arbitrarily split byte chunks into :class:`SSEEvent` objects, incrementally.

    One parser per stream; it is not thread-safe (a stream is consumed by one task anyway).
    """

    __slots__ = ("_block", "_data", "_event", "_has_fields", "_pending", "_pending_cr", "_start")

    def __init__(self) -> None:
        # Pieces of the current, not yet terminated line. Kept as a list so a long line that
        # arrives in many small chunks is joined once instead of re-copied on every chunk.
        self._pending: list[bytes] = []
        # True when the pending bytes end with "\r": the line may be complete, but its
        # terminator could still be "\r\n" with the "\n" in the next chunk, so it is held back
        # until the next byte is known. This is what keeps ``raw`` chunking-independent.
        self._pending_cr = False
        # Complete lines (with terminators) of the event being built, to join into ``raw``.
        self._block: list[bytes] = []
        # Whether ``_block`` holds a non-blank line; blank lines before it are just padding.
        self._has_fields = False
        self._event: str | None = None
        self._data: list[str] = []
        # Stream start: a leading UTF-8 BOM must be ignored when parsing (kept in ``raw``).
        self._start = True

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Consume ``chunk``; return the events it completed, in stream order."""
        if not chunk:
            return []
        if not self._pending_cr and b"\n" not in chunk and b"\r" not in chunk:
            # Fast path for a chunk in the middle of a line: nothing can complete.
            self._pending.append(bytes(chunk))
            return []
        if self._pending:
            self._pending.append(bytes(chunk))
            buf = b"".join(self._pending)
            self._pending.clear()
        else:
            buf = bytes(chunk)
        self._pending_cr = False

        lines = buf.splitlines(keepends=True)
        last = lines[-1]
        if last.endswith(b"\r"):
            # Possibly the first half of "\r\n": wait for the next byte (or flush).
            self._pending.append(lines.pop())
            self._pending_cr = True
        elif not last.endswith(b"\n"):
            self._pending.append(lines.pop())

        events: list[SSEEvent] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: return whatever is buffered as a final event (at most one).

        An unterminated last line is parsed as if it were terminated, so a truncated final
        event (connection dropped before its blank line) is still recorded. Anything buffered
        is returned, even bytes that make no event, so forwarding ``raw`` stays byte-exact.
        The parser is reset and can be reused for a new stream afterwards.
        """
        events: list[SSEEvent] = []
        if self._pending:
            line = b"".join(self._pending)
            self._pending.clear()
            self._pending_cr = False
            event = self._line(line)
            if event is not None:
                events.append(event)
        if self._block:
            events.append(self._dispatch())
        self._start = True
        return events

    def _line(self, line: bytes) -> SSEEvent | None:
        """Process one line (terminator included, except possibly at flush)."""
        self._block.append(line)
        content = line.rstrip(b"\r\n")
        if self._start:
            self._start = False
            if content.startswith(_BOM):
                content = content[3:]
        if not content:
            if self._has_fields:
                return self._dispatch()
            return None  # blank line with nothing before it: padding for the next event
        self._has_fields = True
        if content[0] == 0x3A:  # b":" - a comment line
            return None
        name, colon, value = content.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value.decode("utf-8", "replace"))
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        return None

    def _dispatch(self) -> SSEEvent:
        """Emit the buffered block and start a fresh one."""
        block = self._block
        event = SSEEvent(
            raw=block[0] if len(block) == 1 else b"".join(block),
            event=self._event,
            data="\n".join(self._data),
        )
        self._block = []
        self._has_fields = False
        self._event = None
        self._data = []
        return event
