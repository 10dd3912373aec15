"""OpenClaw trajectory exports (`openclaw sessions export-trajectory` → `events.jsonl`).

An export interleaves two streams: `source: "transcript"` events, which are the session's tree
records re-wrapped (`entryId`/`parentEntryId`, the record's fields under `data`, event types
like `session.model_change`, `user.message`, `assistant.message`), and `source: "runtime"`
events (run start/end, compiled context, model completion stats). The transcript events carry
everything a turn needs, so they are unwrapped into plain OpenClaw records and walked with the
same tree code as every other OpenClaw format; runtime events are not turns and are passed over.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from metaclaw.replay.lines import decode_record, open_log, read_lines
from metaclaw.replay.model import Item, ParseOptions, Problem
from metaclaw.replay.openclaw import SessionRecords, build_turns

FORMAT = "openclaw-trajectory"
SCHEMA = "openclaw-trajectory"


def unwrap(event: dict[str, Any]) -> dict[str, Any] | None:
    """The transcript record inside a trajectory event; None for runtime events."""
    if event.get("source") != "transcript" and "entryId" not in event:
        return None
    data = data if isinstance(data := event.get("data"), dict) else {}
    kind = str(event.get("type") or "")
    if isinstance(data.get("message"), dict):
        record_type = "message"
    elif kind.startswith("session."):
        record_type = kind.removeprefix("session.")
    else:
        record_type = kind
    return {
        **data,
        "type": record_type,
        "id": event.get("entryId"),
        "parentId": event.get("parentEntryId"),
        "timestamp": event.get("ts"),
    }


def parse_trajectory(path: Path, opts: ParseOptions, default_ts: int) -> Iterator[Item]:
    """An `events.jsonl` → turns, per session id found in it (an export holds one)."""
    sessions: dict[str, SessionRecords] = {}
    with open_log(path) as fh:
        for line in read_lines(fh, opts.max_record_bytes):
            where = f"{path}:{line.number}"
            event = decode_record(line, where, opts.max_record_bytes)
            if event is None:
                continue
            if isinstance(event, Problem):
                yield event  # transcript events link by id: its children report the gap
                continue
            if event.get("traceSchema") not in (None, SCHEMA):
                yield Problem(
                    where, f"traceSchema {event.get('traceSchema')!r} is not {SCHEMA!r}; skipped"
                )
                continue
            record = unwrap(event)
            if record is None:
                continue
            sid = str(event.get("sessionId") or event.get("traceId") or path.parent.name)
            session = sessions.get(sid)
            if session is None:
                session = sessions[sid] = SessionRecords(fallback_id=sid)
            problem = session.add(record, where, str(line.number))
            if problem is not None:
                yield problem
    for session in sessions.values():
        yield from build_turns(FORMAT, session, opts, default_ts)
