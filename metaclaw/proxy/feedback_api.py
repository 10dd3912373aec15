"""`POST /v1/feedback`: explicit feedback on a turn (or on a session's latest turn).

Validation lives in `metaclaw.scoring.feedback` (pure); this handler adds the two things only the
proxy can do: check that the turn or session exists in the ledger (404 otherwise — the client
learns at once that it sent the wrong id), and make the row durable in the WAL *before* answering,
so acknowledged feedback is never lost. The existence check is a point lookup (its cost does not
grow with the ledger) in a worker thread; when the ledger cannot answer in time the feedback is
still stored (never refuse a user's signal because of our own trouble) and the reason is logged.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response

from metaclaw.ledger.lookup import find_turn, session_has_completed_turn
from metaclaw.ledger.records import now_micros
from metaclaw.ledger.schemas import FEEDBACK
from metaclaw.proxy.errors import ProxyError
from metaclaw.proxy.relay import ProxyState, caller, json_response, read_body
from metaclaw.proxy.validate import parse_json_object
from metaclaw.scoring.feedback import FeedbackError, feedback_id, feedback_row, parse_feedback

log = logging.getLogger("metaclaw.proxy")

LOOKUP_TIMEOUT_S = 5.0


def _lookup(
    state: ProxyState, turn_id: str | None, session_id: str | None, agent_id: str
) -> str | None:
    """Why the ids do not name a known turn of the calling agent (None when they do). Another
    agent's turn gets exactly the answer an unknown id gets: no oracle for other agents' ids.
    Point lookups: the cost does not grow with the ledger (metaclaw/ledger/lookup.py)."""
    paths = state.settings.paths
    if turn_id is not None:
        ref = find_turn(paths, turn_id)
        if ref is None or ref.agent_id != agent_id:
            return f"no turn with turn_id {turn_id!r} in the ledger"
        if session_id is not None and ref.session_id != session_id:
            return f"turn {turn_id!r} belongs to session {ref.session_id!r}, not {session_id!r}"
        return None
    if not session_has_completed_turn(paths, session_id or "", agent_id):
        return f"no completed turn in session {session_id!r} yet"
    return None


async def feedback(request: Request) -> Response:
    state: ProxyState = request.app.state.proxy
    body = parse_json_object(await read_body(request, state.settings.proxy.max_body_bytes))
    try:
        req = parse_feedback(body)
    except FeedbackError as err:
        raise ProxyError(400, err.message, code="invalid_value", param=err.param) from None
    agent_id = caller(request).agent_id
    problem: str | None = None
    try:
        with anyio.fail_after(LOOKUP_TIMEOUT_S):
            problem = await anyio.to_thread.run_sync(
                _lookup, state, req.turn_id, req.session_id, agent_id, abandon_on_cancel=True
            )
    except Exception as exc:  # the ledger cannot answer: store the feedback anyway
        log.warning(
            "feedback: could not check ids against the ledger (%s: %s); storing anyway",
            type(exc).__name__,
            exc,
        )
    if problem is not None:
        raise ProxyError(
            404, problem, code="not_found", param="turn_id" if req.turn_id else "session_id"
        )
    fid = feedback_id(request.headers.get("idempotency-key"), agent_id)
    row = feedback_row(req, fid, now_micros(), agent_id)
    try:
        await state.recorder.wal.append_async(
            FEEDBACK.name, row, state.settings.proxy.capture_timeout_s
        )
    except Exception as exc:
        log.error("FEEDBACK WRITE FAILED (%s: %s)", type(exc).__name__, exc)
        raise ProxyError(
            503,
            "feedback could not be stored durably; retry later",
            "server_error",
            "ledger_unavailable",
        ) from None
    out: dict[str, Any] = {"id": row["feedback_id"], "object": "feedback", **row}
    out.pop("feedback_id")
    out["created"] = row["ts"] // 1_000_000
    out.pop("ts")
    return json_response(out, 201)
