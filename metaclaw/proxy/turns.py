"""Opening a turn: what every client API does first, in one place.

The OpenAI and Anthropic endpoints differ in how they talk to the upstream, not in how a turn
starts: the session it belongs to (explicit id, else the hash chain over the conversation and
the client's key), its index, and the skills injected into it. Both call `open_turn`, so a
`TurnDraft` field added later is filled on every path or on none.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from metaclaw.proxy.capture import TurnDraft
from metaclaw.proxy.relay import ProxyState, caller
from metaclaw.proxy.session import client_identity, explicit_session_id, turn_index
from metaclaw.skills.library import Injection


async def open_turn(
    state: ProxyState,
    request: Request,
    body: dict[str, Any],
    history: list[dict[str, Any]],
    *,
    client: str,
    endpoint: str,
) -> tuple[TurnDraft, Injection]:
    """The draft of the turn `body` asks for, and the skills chosen for it (already recorded
    on the draft). `history` is the conversation in OpenAI shape, whatever the client API."""
    identity = client_identity(request.headers)
    draft = TurnDraft(
        session_id=state.sessions.resolve(
            explicit_session_id(request.headers, body), history, identity
        ),
        turn_index=turn_index(history),
        client=client,
        endpoint=endpoint,
        request=body,
        stream=bool(body.get("stream")),
        model=body.get("model"),
        client_identity=identity,
        agent_id=caller(request).agent_id,
    )
    injection = await state.select_skills(history, draft.session_id, caller(request).libraries)
    draft.injected_skills = injection.skills
    draft.injected_text = injection.block or None
    draft.skill_set_version = injection.skill_set_version
    return draft, injection
