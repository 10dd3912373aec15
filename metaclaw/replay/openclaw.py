"""OpenClaw transcripts → turns: the session-tree walk shared by every OpenClaw format.

An OpenClaw (pi) transcript is a tree, not a list: each record names its parent (`parentId`),
and editing or regenerating an earlier message starts a new branch from it. File order is only
the order of writing, so we follow the `parentId` links. Every assistant message becomes one
turn whose request is exactly the path from the root to its parent, in OpenAI shape:
user text/images, assistant text + tool calls, `toolResult` → `tool` messages, plus what pi
itself feeds the model (compaction and branch summaries, custom messages, shell runs). A turn on
a branch gets the context of its own branch, and `turn_index` counts the assistant turns on
that path, so two branches each have their own turn 3.

Never a partial turn: when a record's parent is missing (a skipped line, a truncated file), the
whole subtree below it is reported and left out rather than imported with a gap in its context.
Formats only differ in how records arrive: JSONL v3 files (`parse_openclaw_jsonl`), the SQLite
store of OpenClaw 2026.x (`openclaw_sqlite.py`) and trajectory exports (`trajectory.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaclaw.replay.lines import decode_record, open_log, parse_ts, read_lines
from metaclaw.replay.model import Item, ParseOptions, Problem, SessionDone, Turn
from metaclaw.replay.pi_messages import (
    BRANCH_PREFIX,
    COMPACTION_PREFIX,
    Message,
    Reply,
    assistant_reply,
    context_message,
    usage_of,
    user_content,
)
from metaclaw.replay.rows import turn_row

PASSIVE_TYPES = frozenset({"thinking_level_change", "custom", "label", "session_info"})
"""Record types that do not change what the model sees."""
CONTEXT_TYPES = frozenset(
    {"message", "model_change", "compaction", "branch_summary", "custom_message"}
)
KNOWN_TYPES = PASSIVE_TYPES | CONTEXT_TYPES | {"session"}


@dataclass(slots=True)
class Entry:
    id: str
    parent: str | None
    where: str
    record: dict[str, Any]
    message: Message | None = None  # the record's OpenAI-shape message, once converted


@dataclass
class SessionRecords:
    """The records of one session, linked by id, in the order they were read."""

    fallback_id: str
    header: dict[str, Any] | None = None
    entries: list[Entry] = field(default_factory=list)
    by_id: dict[str, Entry] = field(default_factory=dict)
    last_id: str | None = None

    @property
    def session_id(self) -> str:
        sid = (self.header or {}).get("id")
        return sid if isinstance(sid, str) and sid else self.fallback_id

    def gap(self, where: str) -> None:
        """A record was unreadable: legacy records linked by file order must not skip over it."""
        self.last_id = f"<unreadable record at {where}>"

    def add(self, record: dict[str, Any], where: str, position: str) -> Problem | None:
        kind = record.get("type")
        if kind is None and "role" in record:  # legacy "simple" lines: a bare message
            record = {"type": "message", "message": record}
            kind = "message"
        if kind == "session":
            if self.header is None:
                self.header = record
            return None
        if not isinstance(kind, str):
            self.gap(where)
            return Problem(where, "record has no 'type'; skipped")
        raw_id = record.get("id")
        entry_id = raw_id if isinstance(raw_id, str) and raw_id else f"@{position}"
        if "parentId" in record:
            parent = record["parentId"]
            if parent is not None and not isinstance(parent, str):
                self.gap(where)
                return Problem(
                    where, f"'parentId' must be a string or null, got {parent!r}; skipped"
                )
        else:  # version 1 files: a linear list in file order
            parent = self.last_id
        if entry_id in self.by_id:
            first = self.by_id[entry_id].where
            return Problem(where, f"duplicate entry id {entry_id!r} (first at {first}); skipped")
        entry = Entry(entry_id, parent, where, record)
        self.entries.append(entry)
        self.by_id[entry_id] = entry
        self.last_id = entry_id
        return None


# -- the tree walk -------------------------------------------------------------------------


def _entry_time(entry: Entry) -> int | None:
    ts = parse_ts(entry.record.get("timestamp"))
    if ts is None and isinstance(entry.record.get("message"), dict):
        ts = parse_ts(entry.record["message"].get("timestamp"))
    return ts


def _model_of(record: dict[str, Any]) -> str | None:
    if record.get("type") == "model_change":
        model = record.get("modelId")
    elif record.get("type") == "custom" and record.get("customType") == "model-snapshot":
        model = (
            (record.get("data") or {}).get("modelId")
            if isinstance(record.get("data"), dict)
            else None
        )
    else:
        return None
    return model if isinstance(model, str) and model else None


def build_turns(
    fmt: str, session: SessionRecords, opts: ParseOptions, default_ts: int
) -> Iterator[Item]:
    """Walk the session tree depth-first and yield one turn per assistant message."""
    sid = session.session_id
    header_ts = parse_ts((session.header or {}).get("timestamp")) or default_ts
    children: dict[str | None, list[Entry]] = {}
    for entry in session.entries:
        key = entry.parent if entry.parent is None or entry.parent in session.by_id else "<orphan>"
        children.setdefault(key, []).append(entry)

    contexts: list[list[tuple[str, Message | None]]] = [[]]
    models: list[str | None] = [None]
    assistants = 0
    turns = 0
    visited: set[str] = set()
    # (entry, leaving, undo) frames; an explicit stack, since sessions can be 100k entries deep
    stack: list[tuple[Entry, bool, str]] = [
        (e, False, "") for e in reversed(children.get(None, []))
    ]
    while stack:
        entry, leaving, undo = stack.pop()
        if leaving:
            if undo == "context":
                contexts[-1].pop()
            elif undo == "assistant":
                contexts[-1].pop()
                assistants -= 1
            elif undo == "assistant-out":
                assistants -= 1
            elif undo == "model":
                models.pop()
            elif undo == "compaction":
                contexts.pop()
            continue
        visited.add(entry.id)
        record = entry.record
        kind = record.get("type")
        undo = ""
        if kind == "message":
            msg = record.get("message")
            if not isinstance(msg, dict):
                yield Problem(entry.where, "message record without a 'message' object; ignored")
            elif msg.get("role") == "assistant":
                reply = assistant_reply(msg)
                if isinstance(reply, str):
                    yield Problem(entry.where, f"{reply}; turn skipped", turns_lost=1)
                else:
                    model = msg.get("model") if isinstance(msg.get("model"), str) else models[-1]
                    yield Turn(
                        _turn(
                            fmt,
                            sid,
                            entry,
                            session,
                            contexts[-1],
                            reply,
                            model,
                            assistants,
                            header_ts,
                        )
                    )
                    turns += 1
                    if reply.in_context:
                        contexts[-1].append((entry.id, reply.message))
                    undo = "assistant" if reply.in_context else "assistant-out"
                assistants += 1
                if not undo:
                    undo = "assistant-out"
            else:
                converted = context_message(msg, opts)
                if isinstance(converted, str):
                    yield Problem(entry.where, f"{converted}; ignored")
                contexts[-1].append((entry.id, converted if isinstance(converted, dict) else None))
                undo = "context"
        elif kind == "model_change" or (kind == "custom" and _model_of(record)):
            models.append(_model_of(record) or models[-1])
            undo = "model"
        elif kind == "compaction":
            contexts.append(_compacted(contexts[-1], entry))
            undo = "compaction"
        elif kind == "branch_summary":
            summary = {"role": "user", "content": BRANCH_PREFIX + str(record.get("summary") or "")}
            contexts[-1].append((entry.id, summary))
            undo = "context"
        elif kind == "custom_message":
            custom = {"role": "user", "content": user_content(record.get("content"), opts)}
            contexts[-1].append((entry.id, custom))
            undo = "context"
        elif kind not in KNOWN_TYPES:
            yield Problem(entry.where, f"unknown record type {kind!r}; ignored")
        else:
            contexts[-1].append((entry.id, None))  # passive: kept so compaction can find it
            undo = "context"
        stack.append((entry, True, undo))
        stack.extend((child, False, "") for child in reversed(children.get(entry.id, [])))

    yield from _unreachable(session, children, visited)
    yield SessionDone(sid, turns)


def _compacted(
    context: list[tuple[str, Message | None]], entry: Entry
) -> list[tuple[str, Message | None]]:
    """pi's context after a compaction: the summary, then the kept tail of the path."""
    text = COMPACTION_PREFIX + str(entry.record.get("summary") or "")
    summary: Message = {"role": "user", "content": text}
    kept_id = entry.record.get("firstKeptEntryId")
    start = len(context)
    for i, (eid, _) in enumerate(context):
        if eid == kept_id:
            start = i
            break
    return [(entry.id, summary), *context[start:]]


def _turn(
    fmt: str,
    sid: str,
    entry: Entry,
    session: SessionRecords,
    context: list[tuple[str, Message | None]],
    reply: Reply,
    model: str | None,
    turn_index: int,
    default_ts: int,
) -> dict[str, Any]:
    msg = entry.record["message"]
    rec_ts = parse_ts(entry.record.get("timestamp"))
    msg_ts = parse_ts(msg.get("timestamp"))
    parent = session.by_id.get(entry.parent) if entry.parent else None
    parent_ts = _entry_time(parent) if parent is not None else None
    ts_end = rec_ts or msg_ts or parent_ts or default_ts
    if msg_ts is not None and rec_ts is not None and msg_ts <= rec_ts:
        ts_start = msg_ts  # pi stamps an assistant message when its stream starts
    elif parent_ts is not None and parent_ts <= ts_end:
        ts_start = parent_ts  # the request went out right after the last context entry
    else:
        ts_start = ts_end
    return turn_row(
        fmt=fmt,
        session_id=sid,
        entry=entry.id,
        turn_index=turn_index,
        messages=[m for _, m in context if m is not None],
        reply=reply.message,
        model=model,
        ts_start=ts_start,
        ts_end=ts_end,
        finish_reason=reply.finish_reason,
        usage=usage_of(msg.get("usage")),
        status=reply.status,
        error=reply.error,
    )


def _is_assistant(entry: Entry) -> bool:
    msg = entry.record.get("message")
    return (
        entry.record.get("type") == "message"
        and isinstance(msg, dict)
        and msg.get("role") == "assistant"
    )


def _unreachable(
    session: SessionRecords, children: dict[str | None, list[Entry]], visited: set[str]
) -> Iterator[Problem]:
    """Report the subtrees left out because a parent is missing (or the links loop)."""
    for root in children.get("<orphan>", []):
        if root.id in visited:
            continue
        lost = entries = 0
        todo = [root]
        while todo:
            entry = todo.pop()
            if entry.id in visited:
                continue
            visited.add(entry.id)
            entries += 1
            lost += _is_assistant(entry)
            todo.extend(children.get(entry.id, []))
        yield Problem(
            root.where,
            f"parent entry {root.parent!r} is missing (never written, or on a record skipped "
            f"above); the {entries} entries below it, with {lost} turn(s), are skipped",
            turns_lost=lost,
        )
    rest = [e for e in session.entries if e.id not in visited]
    if rest:
        lost = sum(_is_assistant(e) for e in rest)
        yield Problem(
            rest[0].where,
            f"{len(rest)} entries link to each other in a parentId "
            f"cycle and never reach the root; {lost} turn(s) skipped",
            turns_lost=lost,
        )


# -- OpenClaw session JSONL (v1..v3, and v4 records written to JSONL) ------------------------


def parse_openclaw_jsonl(
    path: Path, opts: ParseOptions, default_ts: int, fmt: str = "openclaw"
) -> Iterator[Item]:
    """One session file → its turns. The whole session is read first (its tree needs every
    record); memory is bounded by the largest session, never by the history."""
    session = SessionRecords(fallback_id=path.name.split(".")[0])
    with open_log(path) as fh:
        for line in read_lines(fh, opts.max_record_bytes):
            where = f"{path}:{line.number}"
            record = decode_record(line, where, opts.max_record_bytes)
            if record is None:
                continue
            if isinstance(record, Problem):
                session.gap(where)
                yield record
                continue
            problem = session.add(record, where, str(line.number))
            if problem is not None:
                yield problem
    if session.header is None and not session.entries:
        return
    yield from build_turns(fmt, session, opts, default_ts)
