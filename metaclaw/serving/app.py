"""The policy server's HTTP face: an OpenAI-compatible API over an engine (`protocol.Engine`:
the embedded model's `PolicyEngine` or Tinker's `TinkerEngine`).

Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`, `GET /healthz`,
and `GET|POST /admin/adapter` (which checkpoint new requests run on). Errors are
OpenAI-shaped everywhere; a full queue answers 503 with `Retry-After` before any work is done.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Scope

from metaclaw.config import PolicySettings
from metaclaw.proxy.guard import LocalGuard, Refusal
from metaclaw.serving import responses as shapes
from metaclaw.serving import streams
from metaclaw.serving.adapters import AdapterError
from metaclaw.serving.admin_token import ensure_admin_token
from metaclaw.serving.chat import ChatFormatError
from metaclaw.serving.checkpoints import CheckpointError, ledger_path
from metaclaw.serving.middleware import (
    AdminMiddleware,
    KeyMiddleware,
    error_response,
    json_response,
)
from metaclaw.serving.openai_params import parse_chat, parse_completion
from metaclaw.serving.priority import HEADER as PRIORITY_HEADER
from metaclaw.serving.priority import Priority, parse_priority
from metaclaw.serving.protocol import Engine
from metaclaw.serving.requests import EngineError

log = logging.getLogger("metaclaw.serving")
STALL_GRACE_S = 30.0  # beyond the request timeout, before the async side gives up on the worker
CLIENT_GONE = 499  # nginx's "client closed request": nobody reads it, logs can tell
DEFAULT_MAX_BODY: int = PolicySettings.model_fields["max_body_bytes"].default


def _refusal_response(scope: Scope, refusal: Refusal) -> Response:
    return error_response(EngineError(refusal.status, refusal.message, refusal.code))


class ServerState:
    def __init__(self, engine: Engine, home: Path, timeout_s: float, max_body_bytes: int) -> None:
        self.engine = engine
        self.home = home
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.started = time.time()


def create_app(
    engine: Engine,
    *,
    home: Path,
    request_timeout_s: float,
    api_key: str | None = None,
    own_engine: bool = True,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The ASGI app. The engine is started with the app and closed with it when owned.

    The admin token is read (created on the first start) under `home`.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            if own_engine:
                await asyncio.to_thread(engine.close)

    app = FastAPI(title="MetaClaw policy server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.policy = ServerState(engine, Path(home), request_timeout_s, max_body_bytes)
    app.add_middleware(AdminMiddleware, token=ensure_admin_token(Path(home)).encode())
    app.add_middleware(KeyMiddleware, key=api_key.encode() if api_key else None)
    # Added last, so it runs first: a browser's request is refused before anything else.
    app.add_middleware(LocalGuard, allowed_hosts=allowed_hosts or [], respond=_refusal_response)
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/admin/adapter", get_adapter, methods=["GET"])
    app.add_api_route("/admin/adapter", set_adapter, methods=["POST"])

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, exc: EngineError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {
            404: f"no route {request.method} {request.url.path}",
            405: f"method {request.method} not allowed on {request.url.path}",
        }
        return error_response(
            EngineError(
                exc.status_code,
                message.get(exc.status_code, str(exc.detail)),
                "not_found" if exc.status_code == 404 else "http",
            )
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return error_response(
            EngineError(
                500, f"internal error: {type(exc).__name__}", "server_error", "server_error"
            )
        )

    return app


def _state(request: Request) -> ServerState:
    return request.app.state.policy


async def _body(request: Request) -> Any:
    """The JSON body, refused with 413 as soon as it passes `policy.max_body_bytes`."""
    limit = _state(request).max_body_bytes
    declared = request.headers.get("content-length", "")
    too_large = EngineError(
        413, f"request body exceeds policy.max_body_bytes ({limit} bytes)", "request_too_large"
    )
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise EngineError(400, "the request body is not valid JSON", "invalid_json") from None


# ----- chat --------------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    state = _state(request)
    engine = state.engine
    chat = parse_chat(await _body(request), engine.max_new_tokens)
    try:
        prompt_ids = await asyncio.to_thread(_chat_prompt_ids, engine, chat)
    except ChatFormatError as exc:
        raise EngineError(400, str(exc), "invalid_messages", param="messages") from None
    max_tokens = engine.check_prompt(prompt_ids, chat.params.max_tokens)
    params = _with_max(chat.params, max_tokens)
    req = engine.submit(
        prompt_ids,
        params,
        stream=chat.stream,
        timeout_s=state.timeout_s,
        priority=_priority(request),
    )
    deadline = time.monotonic() + state.timeout_s + STALL_GRACE_S
    rid = shapes.new_id("chatcmpl")
    if not chat.stream:
        result = await streams.result(req, deadline, request)
        if result is None:
            return Response(status_code=CLIENT_GONE)
        return json_response(
            shapes.chat_completion(
                rid,
                engine.name,
                result,
                logprobs=chat.logprobs,
                top_p=params.top_p,
                token_text=engine.token_text,
            )
        )
    first = await streams.first_event(req, deadline) if engine.answers_whole else None
    return StreamingResponse(
        streams.chat_stream(
            req, rid, engine, chat.logprobs, chat.include_usage, params.top_p, deadline, first
        ),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


def _chat_prompt_ids(engine: Engine, chat: Any) -> list[int]:
    """Template + tokenizer, off the event loop: a long prompt takes milliseconds under the
    tokenizer lock, and other requests' streams must not wait on it."""
    text = engine.render_chat(chat.messages, chat.tools)
    return engine.encode(text, add_special_tokens=False)


def _with_max(params: Any, max_tokens: int) -> Any:
    return replace(params, max_tokens=max_tokens)


def _priority(request: Request) -> Priority:
    """The request's class (`X-MetaClaw-Priority`); it can only lower it (see priority.py)."""
    try:
        return parse_priority(request.headers.get(PRIORITY_HEADER))
    except ValueError as exc:
        raise EngineError(400, str(exc), "invalid_priority") from None


# ----- completions -------------------------------------------------------------------------


async def completions(request: Request) -> Response:
    state = _state(request)
    engine = state.engine
    comp = parse_completion(await _body(request))
    if isinstance(comp.prompt, str):
        prompt_ids = await asyncio.to_thread(engine.encode, comp.prompt, add_special_tokens=True)
        prompt_text = comp.prompt
    else:
        prompt_ids = comp.prompt
        engine.check_prompt(prompt_ids, 0)  # token ids in range before decoding them
        prompt_text = await asyncio.to_thread(engine.decode_all, prompt_ids)
    max_tokens = engine.check_prompt(prompt_ids, comp.params.max_tokens)
    if comp.params.max_tokens > 0 and max_tokens == 0:
        raise EngineError(
            400, "no room left in the context for a completion", "context_length_exceeded"
        )
    params = _with_max(comp.params, max_tokens)
    req = engine.submit(
        prompt_ids,
        params,
        stream=comp.stream,
        timeout_s=state.timeout_s,
        priority=_priority(request),
    )
    deadline = time.monotonic() + state.timeout_s + STALL_GRACE_S
    rid = shapes.new_id("cmpl")
    if not comp.stream:
        result = await streams.result(req, deadline, request)
        if result is None:
            return Response(status_code=CLIENT_GONE)
        return json_response(
            shapes.text_completion(
                rid,
                engine.name,
                result,
                prompt_text=prompt_text,
                echo=comp.echo,
                logprobs=comp.logprobs,
                top_p=params.top_p,
                token_text=engine.token_text,
            )
        )
    first = await streams.first_event(req, deadline) if engine.answers_whole else None
    return StreamingResponse(
        streams.completion_stream(
            req, rid, engine, comp, prompt_text, params.top_p, deadline, first
        ),
        media_type="text/event-stream",
        headers={"cache-control": "no-cache"},
    )


# ----- models, health, admin ---------------------------------------------------------------


async def models(request: Request) -> Response:
    state = _state(request)
    engine = state.engine
    return json_response(
        {
            "object": "list",
            "data": [
                {
                    "id": engine.name,
                    "object": "model",
                    "created": int(state.started),
                    "owned_by": "metaclaw",
                    "metaclaw": {
                        "checkpoint": engine.policy.checkpoint_id,
                        "max_context_tokens": engine.max_context_tokens,
                    },
                }
            ],
        }
    )


async def healthz(request: Request) -> Response:
    state = _state(request)
    engine = state.engine
    stats = engine.stats
    body = {
        "status": "ok" if engine.alive else "down",
        "model": engine.name,
        **engine.health(),
        "checkpoint": engine.policy.checkpoint_id,
        "queued": engine.queued,
        "queued_background": engine.queued_by(Priority.BACKGROUND),
        "active": engine.active,
        "paused": engine.paused,
        "max_queue": engine.max_queue,
        "max_batch": engine.max_batch,
        "stats": {k: getattr(stats, k) for k in stats.__dataclass_fields__},
    }
    return json_response(body, 200 if engine.alive else 503)


async def get_adapter(request: Request) -> Response:
    policy = _state(request).engine.policy
    return json_response({"checkpoint_id": policy.checkpoint_id, "path": policy.path})


async def set_adapter(request: Request) -> Response:
    """Hot-swap the LoRA adapter: {"checkpoint_id": str|null, "path": str|null}.

    Both null: serve the base weights. A checkpoint_id alone: its path from the ledger, else
    `METACLAW_HOME/checkpoints/<id>/`. A path alone: that directory, labelled by its name.
    """
    state = _state(request)
    body = await _body(request)
    if not isinstance(body, dict):
        raise EngineError(
            400, 'body must be {"checkpoint_id": str|null, "path": str|null}', "invalid_json"
        )
    checkpoint_id, path = body.get("checkpoint_id"), body.get("path")
    for key, value in (("checkpoint_id", checkpoint_id), ("path", path)):
        if value is not None and (not isinstance(value, str) or not value):
            raise EngineError(
                400, f"'{key}' must be a non-empty string or null", "invalid_value", param=key
            )
    target: Any = None
    try:
        if path is not None or checkpoint_id is not None:
            recorded = path
            if recorded is None:
                from metaclaw.config import LedgerPaths

                recorded = await asyncio.to_thread(
                    ledger_path, LedgerPaths(state.home), str(checkpoint_id)
                )
            checkpoint_id, target = state.engine.locate(state.home, checkpoint_id, recorded)
    except CheckpointError as exc:
        raise EngineError(400, str(exc), "invalid_checkpoint") from None
    try:
        policy = await state.engine.swap(checkpoint_id, target)
    except AdapterError as exc:
        raise EngineError(422, str(exc), "invalid_adapter") from None
    except EngineError:
        raise
    except Exception as exc:  # peft refused it after validation: report, keep serving
        log.exception("adapter load failed")
        raise EngineError(
            422, f"could not load the adapter at {target}: {exc}", "invalid_adapter"
        ) from None
    return json_response({"checkpoint_id": policy.checkpoint_id, "path": policy.path})
