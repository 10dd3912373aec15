"""Who may call the policy server: the bearer key on every path but /healthz, and the admin
token on `/admin/*`. Kept apart from the routes so each can be read (and refused) alone; both
answer OpenAI-shaped errors through `error_response`.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from metaclaw.serving.admin_token import HEADER as ADMIN_HEADER
from metaclaw.serving.admin_token import TOKEN_FILE
from metaclaw.serving.requests import EngineError

OPEN_PATHS = frozenset({"/healthz"})


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body), status_code=status, media_type="application/json", headers=headers
    )


def error_response(err: EngineError) -> Response:
    headers = {"retry-after": "1"} if err.status == 503 else None
    return json_response(err.body(), err.status, headers)


class KeyMiddleware:
    """Bearer-key auth for every path but /healthz when `policy.api_key` is set."""

    def __init__(self, app: ASGIApp, key: bytes | None) -> None:
        self.app = app
        self.key = key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.key is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), self.key):
            await self.app(scope, receive, send)
            return
        err = EngineError(
            401,
            "missing or invalid API key: send policy.api_key as 'Authorization: Bearer <key>'",
            "invalid_api_key",
            "authentication_error",
        )
        await error_response(err)(scope, receive, send)


class AdminMiddleware:
    """`/admin/*` needs the admin token (`admin_token.py`) on top of any API key."""

    def __init__(self, app: ASGIApp, token: bytes) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/admin/"):
            await self.app(scope, receive, send)
            return
        presented = dict(scope["headers"]).get(ADMIN_HEADER.encode(), b"")
        if presented and hmac.compare_digest(presented, self.token):
            await self.app(scope, receive, send)
            return
        err = EngineError(
            401,
            f"admin endpoints need the '{ADMIN_HEADER}' header with the token "
            f"in METACLAW_HOME/{TOKEN_FILE}",
            "invalid_admin_token",
            "authentication_error",
        )
        await error_response(err)(scope, receive, send)
