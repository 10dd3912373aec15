"""Explicit feedback: validating what a client posts, and the `feedback` row it becomes.

Pure (no HTTP, no ledger) so every rule is tested directly; `metaclaw/proxy/feedback_api.py`
maps `FeedbackError` to an OpenAI-shaped 400 naming the field to fix.

Body: `{"turn_id"?: str, "session_id"?: str, "value": number in [-1, 1], "comment"?: str}`, at
least one id. Clients usually know only their session (`X-Session-Id`); such feedback is tied to
the session's latest completed turn when it is read (view `turn_feedback`).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from typing import Any

from metaclaw.ledger.records import Row
from metaclaw.ledger.schemas import DEFAULT_AGENT

FIELDS = ("turn_id", "session_id", "value", "comment")
MAX_ID_CHARS = 512
MAX_COMMENT_CHARS = 4000


class FeedbackError(ValueError):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


@dataclass(frozen=True, slots=True)
class FeedbackRequest:
    value: float
    turn_id: str | None = None
    session_id: str | None = None
    comment: str | None = None


def _check_id(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise FeedbackError(f"'{name}' must be a string, got {type(value).__name__}", name)
    if not value.strip():
        raise FeedbackError(f"'{name}' must not be empty", name)
    if len(value) > MAX_ID_CHARS:
        raise FeedbackError(f"'{name}' is longer than {MAX_ID_CHARS} characters", name)
    if value != value.strip() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise FeedbackError(
            f"'{name}' must not contain control characters or surrounding whitespace", name
        )
    return value


def parse_feedback(body: dict[str, Any]) -> FeedbackRequest:
    """A validated request; raises `FeedbackError` saying which field to fix and how."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        raise FeedbackError(
            f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(FIELDS)}",
            unknown[0],
        )
    turn_id = _check_id(body, "turn_id")
    session_id = _check_id(body, "session_id")
    if turn_id is None and session_id is None:
        raise FeedbackError(
            "send 'turn_id' or 'session_id' to say which turn the feedback is about", "turn_id"
        )
    if "value" not in body or body["value"] is None:
        raise FeedbackError("'value' is required: a number from -1 (bad) to 1 (good)", "value")
    value = body["value"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FeedbackError(
            f"'value' must be a number from -1 to 1, got {type(value).__name__}", "value"
        )
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise FeedbackError(f"'value' must be between -1 and 1, got {value}", "value")
    comment = body.get("comment")
    if comment is not None:
        if not isinstance(comment, str):
            raise FeedbackError(
                f"'comment' must be a string, got {type(comment).__name__}", "comment"
            )
        if len(comment) > MAX_COMMENT_CHARS:
            raise FeedbackError(
                f"'comment' is longer than {MAX_COMMENT_CHARS} characters", "comment"
            )
    return FeedbackRequest(float(value), turn_id, session_id, comment)


def feedback_id(idempotency_key: str | None = None, agent_id: str = DEFAULT_AGENT) -> str:
    """A fresh id, or a stable one derived from the client's `Idempotency-Key` (so a retried
    POST lands once: ingest drops known ids). Keys are per agent: another agent sending the
    same key (by chance, or to suppress this one's ratings) gets a different id. The default
    agent's ids are derived as before agents existed, so a retry across an upgrade still
    lands once."""
    if not idempotency_key:
        return uuid.uuid4().hex
    scope = b"" if agent_id == DEFAULT_AGENT else agent_id.encode() + b"\x1f"
    return hashlib.sha256(b"feedback\x1f" + scope + idempotency_key.encode()).hexdigest()[:32]


def feedback_row(req: FeedbackRequest, fid: str, ts_micros: int, agent_id: str) -> Row:
    return {
        "feedback_id": fid,
        "turn_id": req.turn_id,
        "session_id": req.session_id,
        "value": req.value,
        "comment": req.comment,
        "ts": ts_micros,
        "agent_id": agent_id,
    }
