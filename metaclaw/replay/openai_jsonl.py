"""OpenAI chat JSONL (`{"messages": [...]}` per line: fine-tuning sets, chat exports, logs).

Each assistant message of a line is one turn; its request is everything before it. Lines are
often snapshots (a logger writing the whole conversation after every reply), so the id of a
turn is the hash of the messages up to and including its reply, within its session: the same
turn seen again on a later line gets the same id and ingest keeps one copy. A line without a
session id is its own session, named by the hash of its content (stable wherever the file
moves). A reward/feedback field becomes a `feedback` row on the line's last turn (or, inside an
assistant message, on that turn), with a value in -1..1.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from metaclaw.replay.lines import decode_record, open_log, parse_ts, read_lines
from metaclaw.replay.model import Feedback, Item, ParseOptions, Problem, SessionDone, Turn
from metaclaw.replay.rows import FINISH_REASONS, feedback_row, json_arguments, turn_row

FORMAT = "openai"
ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
MESSAGE_KEYS = (
    "role",
    "content",
    "name",
    "tool_calls",
    "tool_call_id",
    "function_call",
    "refusal",
    "reasoning_content",
)
FEEDBACK_KEYS = ("reward", "feedback", "score", "rating", "label")
_WORDS = {
    "good": 1.0,
    "positive": 1.0,
    "up": 1.0,
    "thumbs_up": 1.0,
    "like": 1.0,
    "bad": -1.0,
    "negative": -1.0,
    "down": -1.0,
    "thumbs_down": -1.0,
    "dislike": -1.0,
    "neutral": 0.0,
}
_TIME_KEYS = ("timestamp", "created_at", "created", "time", "ts")


class LineError(ValueError):
    pass


def _message(raw: Any, index: int) -> dict[str, Any]:
    """A message reduced to its OpenAI keys (metadata such as timestamps stays out)."""
    if not isinstance(raw, dict):
        raise LineError(f"messages[{index}] is not an object")
    role = raw.get("role")
    if role not in ROLES:
        raise LineError(
            f"messages[{index}] has role {role!r}; expected one of {', '.join(sorted(ROLES))}"
        )
    msg = {k: raw[k] for k in MESSAGE_KEYS if k in raw}
    calls = raw.get("tool_calls")
    if calls is not None:
        if not isinstance(calls, list):
            raise LineError(f"messages[{index}].tool_calls is not a list")
        fixed = []
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise LineError(f"messages[{index}].tool_calls[{j}] has no function name")
            fixed.append(
                {
                    "id": str(call.get("id") or f"call_{index}_{j}"),
                    "type": "function",
                    "function": {
                        "name": fn["name"],
                        "arguments": json_arguments(fn.get("arguments")),
                    },
                }
            )
        msg["tool_calls"] = fixed or None
        if not fixed:
            del msg["tool_calls"]
    return msg


def feedback_value(raw: Any) -> tuple[float, str | None] | str:
    """(value in -1..1, comment) from the shapes logs use; a string says why it is unusable."""
    comment = None
    if isinstance(raw, dict):
        comment = raw.get("comment") or raw.get("reason") or raw.get("text")
        comment = str(comment) if comment is not None else None
        for key in ("value", "score", "reward", "rating"):
            if key in raw:
                raw = raw[key]
                break
        else:
            return "feedback object has no value/score/reward/rating"
    if isinstance(raw, bool):
        return (1.0 if raw else -1.0), comment
    if isinstance(raw, str) and raw.strip().lower() in _WORDS:
        return _WORDS[raw.strip().lower()], comment
    if isinstance(raw, int | float):
        value = float(raw)
        if -1.0 <= value <= 1.0:
            return value, comment
        return f"value {raw!r} is outside -1..1"
    return f"cannot read {raw!r} as a value in -1..1"


def _time(obj: dict[str, Any]) -> int | None:
    for key in _TIME_KEYS:
        ts = parse_ts(obj.get(key))
        if ts is not None:
            return ts
    return None


def _session_id(line: dict[str, Any], digest: str) -> str:
    meta = meta if isinstance(meta := line.get("metadata"), dict) else {}
    for value in (
        line.get("session_id"),
        meta.get("session_id"),
        line.get("conversation_id"),
        meta.get("conversation_id"),
        meta.get("thread_id"),
    ):
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return f"openai-{digest[:24]}"


def parse_openai_record(
    line: dict[str, Any], where: str, default_ts: int, opts: ParseOptions
) -> Iterator[Item]:
    """One line's turns (and feedback); a line that cannot be read whole yields one Problem."""
    raw_messages = line.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        yield Problem(where, "expected an object with a non-empty 'messages' list; skipped")
        return
    try:
        messages = [_message(m, i) for i, m in enumerate(raw_messages)]
    except LineError as exc:
        yield Problem(where, f"{exc}; line skipped")
        return
    if not any(m["role"] == "assistant" for m in messages):
        yield Problem(where, "no assistant message: nothing to import; skipped")
        return
    meta = meta if isinstance(meta := line.get("metadata"), dict) else {}
    tools = line.get("tools") if isinstance(line.get("tools"), list) else None
    line_model = line.get("model") or meta.get("model")
    line_ts = _time(line) or _time(meta) or default_ts
    running = hashlib.blake2b(digest_size=16)
    prefix_digests = []
    for msg in messages:
        running.update(orjson.dumps(msg, option=orjson.OPT_SORT_KEYS))
        prefix_digests.append(running.copy().hexdigest())
    sid = _session_id(line, prefix_digests[-1])
    last_assistant = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    assistants = 0
    prev_ts = None
    turns = 0
    for i, (raw, msg) in enumerate(zip(raw_messages, messages, strict=True)):
        own_ts = _time(raw)
        if msg["role"] != "assistant":
            prev_ts = own_ts or prev_ts
            continue
        ts_end = own_ts or line_ts
        ts_start = prev_ts if prev_ts is not None and prev_ts <= ts_end else ts_end
        finish = raw.get("finish_reason")
        if finish not in FINISH_REASONS:
            finish = "tool_calls" if msg.get("tool_calls") else "stop"
        if i == last_assistant and finish == "stop" and line.get("finish_reason") in FINISH_REASONS:
            finish = line["finish_reason"]
        usage = raw.get("usage") if isinstance(raw.get("usage"), dict) else None
        if usage is None and i == last_assistant and isinstance(line.get("usage"), dict):
            usage = line["usage"]
        model = raw.get("model") or line_model
        reply = {"role": "assistant", "content": msg.get("content")}
        if isinstance(reply["content"], list):  # parts: the reply text is their text
            reply["content"] = (
                "".join(p.get("text", "") for p in reply["content"] if isinstance(p, dict)) or None
            )
        for key in ("tool_calls", "reasoning_content", "refusal"):
            if key in msg:
                reply[key] = msg[key]
        row = turn_row(
            fmt=FORMAT,
            session_id=sid,
            entry=prefix_digests[i],
            turn_index=assistants,
            messages=messages[:i],
            reply=reply,
            model=model if isinstance(model, str) else None,
            ts_start=ts_start,
            ts_end=ts_end,
            finish_reason=finish,
            usage=usage,
            tools=tools,
        )
        yield Turn(row)
        turns += 1
        assistants += 1
        prev_ts = ts_end
        sources = [(raw, f"{where} messages[{i}]", "message")]
        if i == last_assistant:
            sources.append((line, where, "line"))
        for holder, label, level in sources:
            for key in FEEDBACK_KEYS:
                if key not in holder or holder[key] is None:
                    continue
                if key == "label" and not isinstance(holder[key], bool):
                    continue  # labels are often categories; only booleans are a verdict
                parsed = feedback_value(holder[key])
                if isinstance(parsed, str):
                    yield Problem(where, f"{key}: {parsed}; feedback skipped (the turn is kept)")
                    continue
                value, comment = parsed
                note = f"backfill:openai {label} ({key})" + (f": {comment}" if comment else "")
                yield Feedback(feedback_row(row, value, note, f"{key}@{level}"))
    yield SessionDone(sid, turns)


def parse_openai_jsonl(path: Path, opts: ParseOptions, default_ts: int) -> Iterator[Item]:
    with open_log(path) as fh:
        for line in read_lines(fh, opts.max_record_bytes):
            where = f"{path}:{line.number}"
            record = decode_record(line, where, opts.max_record_bytes)
            if record is None:
                continue
            if isinstance(record, Problem):
                yield record
                continue
            yield from parse_openai_record(record, where, default_ts, opts)
