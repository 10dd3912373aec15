"""OpenClaw 2026.x transcript store: `<state>/agents/<agent>/agent/openclaw-agent.sqlite`.

OpenClaw 2026.9 no longer writes session JSONL files; each transcript record is a row of
`transcript_events(session_id, seq, event_json | event_zstd, ...)`, large ones zstd-compressed.
The rows of one session are read in `seq` order, one session at a time (memory stays bounded by
the largest session), and walked with the same tree code as the JSONL files. The database is
opened read-only, so importing from a live OpenClaw installation never disturbs it: its name goes
into the SQLite URI percent-encoded (`Path.as_uri`), so a file called `x?mode=rwc` cannot
reopen it read-write. Compressed events are inflated as a stream and stopped at
`replay.max_record_bytes`: the size a frame header declares (or the `event_utf8_bytes` column)
is the attacker's word, not a bound (`max_output_size` is ignored when a frame declares one).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson

from metaclaw.replay.model import Item, NotALogError, ParseOptions, Problem
from metaclaw.replay.openclaw import SessionRecords, build_turns

FORMAT = "openclaw-sqlite"
TABLE = "transcript_events"
SQLITE_MAGIC = b"SQLite format 3\x00"


def connect_readonly(path: Path) -> sqlite3.Connection:
    """Read-only connection; a non-database or a database without transcripts is not a log."""
    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        found = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (TABLE,)
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        raise NotALogError(path, f"cannot be read as a SQLite database ({exc})") from None
    if not found:
        con.close()
        raise NotALogError(
            path, f"a SQLite database without a {TABLE} table: not an OpenClaw transcript store"
        )
    return con


class RecordTooLarge(ValueError):
    """A compressed event inflates past `replay.max_record_bytes`."""


def _decompress(blob: bytes, limit: int) -> bytes:
    """The event, read as a stream and stopped one byte past `limit` (never allocated whole)."""
    import zstandard

    chunks: list[bytes] = []
    got = 0
    with zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True) as reader:
        while got <= limit and (chunk := reader.read(min(limit + 1 - got, 1 << 20))):
            chunks.append(chunk)
            got += len(chunk)
    data = b"".join(chunks)
    if got > limit:
        raise RecordTooLarge(
            f"event inflates past replay.max_record_bytes ({limit} bytes); skipped"
        )
    return data


def parse_sqlite(path: Path, opts: ParseOptions, default_ts: int) -> Iterator[Item]:
    con = connect_readonly(path)
    try:
        sessions = [
            r[0]
            for r in con.execute(f"SELECT DISTINCT session_id FROM {TABLE} ORDER BY session_id")
        ]
        for sid in sessions:
            session = SessionRecords(fallback_id=str(sid))
            rows = con.execute(
                f"SELECT seq, event_json, event_zstd, event_utf8_bytes FROM {TABLE} "
                "WHERE session_id = ? ORDER BY seq",
                (sid,),
            )
            for seq, text, blob, size in rows:
                where = f"{path}#{sid}:{seq}"
                record = _record(text, blob, size, where, opts)
                if isinstance(record, Problem):
                    session.gap(where)
                    yield record
                    continue
                problem = session.add(record, where, f"seq{seq}")
                if problem is not None:
                    yield problem
            yield from build_turns(FORMAT, session, opts, default_ts)
    except sqlite3.DatabaseError as exc:
        yield Problem(f"{path}", f"reading {TABLE} failed ({exc}); the rest of the file skipped")
    finally:
        con.close()


def _record(
    text: str | None, blob: bytes | None, size: int | None, where: str, opts: ParseOptions
) -> dict | Problem:
    limit = opts.max_record_bytes
    try:
        if text is not None:
            if len(text) > limit:
                return Problem(
                    where,
                    f"event of {len(text)} characters exceeds replay.max_record_bytes; skipped",
                )
            data: bytes | str = text
        elif blob is not None:
            if size is not None and size > limit:
                return Problem(
                    where, f"event of {size} bytes exceeds replay.max_record_bytes; skipped"
                )
            data = _decompress(blob, limit)
        else:
            return Problem(where, "event has neither event_json nor event_zstd; skipped")
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return Problem(where, f"invalid JSON in event ({exc}); skipped")
    except RecordTooLarge as exc:
        return Problem(where, str(exc))
    except Exception as exc:  # zstandard.ZstdError and friends: a corrupt blob
        return Problem(where, f"cannot decompress event_zstd ({exc}); skipped")
    if not isinstance(value, dict):
        return Problem(where, f"expected a JSON object, got {type(value).__name__}; skipped")
    return value
