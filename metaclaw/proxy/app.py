"""The capture proxy as an ASGI app: routes, auth, shaped errors, and the resources it owns."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from metaclaw.agents.registry import agent_for_key
from metaclaw.agents.store import AgentKeys, registry_path
from metaclaw.config import Settings
from metaclaw.endpoints import policy_base_url
from metaclaw.ledger.schemas import DEFAULT_AGENT
from metaclaw.ledger.wal import WalWriter
from metaclaw.providers import azure_endpoint
from metaclaw.proxy.anthropic_api import messages
from metaclaw.proxy.capture import Recorder
from metaclaw.proxy.errors import ProxyError, error_body, is_anthropic_path
from metaclaw.proxy.feedback_api import feedback
from metaclaw.proxy.guard import LocalGuard, Refusal
from metaclaw.proxy.heap import HeapGuard
from metaclaw.proxy.openai_api import chat_completions, list_models
from metaclaw.proxy.relay import CALLER, Caller, ProxyState, error_response, json_response
from metaclaw.proxy.session import SESSIONS_FILE, SessionTracker, presented_key
from metaclaw.proxy.upstream import AzureRoute, Upstream
from metaclaw.skills.library import SkillLibrary

log = logging.getLogger("metaclaw.proxy")
OPEN_PATHS = frozenset({"/healthz"})


class AuthMiddleware:
    """Who is calling, for every path but /healthz: the agent whose key the request carries
    (`metaclaw agents`), or the `default` agent for one of `proxy.api_keys`. With neither
    configured there is no auth and everything is the `default` agent."""

    def __init__(self, app: ASGIApp, keys: list[bytes], agents: AgentKeys) -> None:
        self.app = app
        self.keys = keys
        self.agents = agents

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        index = self.agents.index()  # a stat; the file is read again only when it changed
        if not self.keys and not index:
            scope[CALLER] = Caller(DEFAULT_AGENT, proxy_key=False, libraries=(DEFAULT_AGENT,))
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        key = presented_key(headers)
        agent = agent_for_key(index, key)
        if (
            agent is None
            and key is not None
            and any(hmac.compare_digest(key.encode(), k) for k in self.keys)
        ):
            agent = DEFAULT_AGENT
        if agent is not None:
            libraries = self.agents.registry.skill_libraries(agent)
            scope[CALLER] = Caller(agent, proxy_key=True, libraries=libraries)
            await self.app(scope, receive, send)
            return
        reason = "missing API key" if key is None else "invalid API key"
        if index:
            fix = (
                "send your agent's key (printed once by `metaclaw agents add NAME`; a lost key "
                "is replaced by `metaclaw agents rotate-key NAME`)"
            )
        else:
            fix = "send one of proxy.api_keys"
        err = ProxyError(
            401,
            f"{reason}: {fix} as 'Authorization: Bearer <key>' or 'x-api-key: <key>'",
            "authentication_error",
            "invalid_api_key",
        )
        response = error_response(err, anthropic=is_anthropic_path(scope["path"]))
        await response(scope, receive, send)


def azure_route(settings: Settings) -> AzureRoute | None:
    """The upstream as an Azure OpenAI deployment, when `azure.use_for` includes "upstream"."""
    endpoint = azure_endpoint(settings, "upstream")
    if endpoint is None:
        return None
    key = endpoint.api_key.get_secret_value() if endpoint.api_key else ""
    return AzureRoute(
        endpoint.base_url,
        settings.azure.deployment or endpoint.model,
        endpoint.azure_api_version or settings.azure.api_version,
        key,
    )


def create_app(
    settings: Settings, wal: WalWriter | None = None, *, freeze_heap: bool = False
) -> FastAPI:
    """Build the proxy. Pass `wal` to share a writer; otherwise the app owns one.

    `freeze_heap`: the app is its process's only job (the `metaclaw proxy` server), so its
    start-up heap is frozen out of the garbage collector's full passes (proxy/heap.py); an app
    embedded in another process (tests) leaves that process's collector alone."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = wal is None
        writer = wal or WalWriter(
            settings.paths.wal,
            rotate_bytes=settings.ledger.wal_rotate_bytes,
            rotate_s=settings.ledger.wal_rotate_s,
            queue_max=settings.ledger.wal_queue_max,
            queue_max_bytes=settings.ledger.wal_queue_max_bytes,
            batch_max=settings.ledger.wal_batch_max,
        )
        if owned:
            writer.start()
        keys = settings.proxy.api_keys
        policy_key = settings.policy.api_key
        upstream = Upstream(
            settings.upstream,
            client_auth_passthrough=not keys,
            local_policy_url=policy_base_url(settings),
            local_policy_key=policy_key.get_secret_value() if policy_key else None,
            azure=azure_route(settings),
        )
        # Loads in the background: the proxy serves (without skills) before the library is up.
        skills = SkillLibrary.open(settings, block=False) if settings.skills.enabled else None
        app.state.proxy = ProxyState(
            settings=settings,
            upstream=upstream,
            recorder=Recorder(writer, settings.proxy.capture_timeout_s),
            sessions=SessionTracker(
                settings.proxy.session_cache_size, settings.paths.home / SESSIONS_FILE
            ),
            skills=skills,
        )
        # Start-up objects out of the collector's reach: its full passes stalled the event loop
        # (proxy/heap.py). Again once the skill library, loading in the background, is up.
        heap = app.state.heap = HeapGuard() if freeze_heap else None
        settled = None
        if heap is not None:
            heap.freeze(collect=True)
            if skills is not None:
                settled = asyncio.create_task(_freeze_when_loaded(heap, skills))
        try:
            yield
        finally:
            if settled is not None:
                settled.cancel()
            if heap is not None:
                heap.close()
            app.state.proxy.sessions.close()
            if skills is not None:
                skills.close()
            await upstream.aclose()
            if owned:
                writer.close()

    app = FastAPI(title="MetaClaw proxy", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(
        AuthMiddleware,
        keys=[k.get_secret_value().encode() for k in settings.proxy.api_keys],
        agents=AgentKeys(registry_path(settings.paths.home)),
    )
    # Added last, so it runs first: a browser's request is refused before auth or any read.
    app.add_middleware(
        LocalGuard,
        allowed_hosts=settings.proxy.allowed_hosts,
        allowed_origins=settings.proxy.allowed_origins,
        respond=_refusal_response,
    )
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/messages", messages, methods=["POST"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/v1/feedback", feedback, methods=["POST"])
    app.add_api_route("/healthz", healthz, methods=["GET"])

    @app.exception_handler(ProxyError)
    async def _proxy_error(request: Request, exc: ProxyError) -> Response:
        return error_response(exc, anthropic=is_anthropic_path(request.url.path))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = {
            404: f"no route {request.method} {request.url.path}",
            405: f"method {request.method} not allowed on {request.url.path}",
        }
        err = ProxyError(
            exc.status_code,
            message.get(exc.status_code, str(exc.detail)),
            code="not_found" if exc.status_code == 404 else None,
        )
        return error_response(err, anthropic=is_anthropic_path(request.url.path))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        err = ProxyError(500, f"internal proxy error: {type(exc).__name__}", "server_error")
        body: dict[str, Any] = error_body(err, anthropic=is_anthropic_path(request.url.path))
        return json_response(body, 500)

    return app


async def _freeze_when_loaded(heap: HeapGuard, skills: SkillLibrary) -> None:
    await anyio.to_thread.run_sync(skills.wait_refreshed, 600.0, abandon_on_cancel=True)
    heap.freeze(collect=False)


def _refusal_response(scope: Scope, refusal: Refusal) -> Response:
    err = ProxyError(refusal.status, refusal.message, code=refusal.code)
    return error_response(err, anthropic=is_anthropic_path(scope["path"]))


async def healthz(request: Request) -> Response:
    state: ProxyState = request.app.state.proxy
    wal = state.recorder.wal
    return json_response(
        {
            "status": "ok",
            "pid": os.getpid(),  # which worker answered (proxy.workers)
            "ledger": {
                "recorded": state.recorder.stats.recorded,
                "failed": state.recorder.stats.failed,
                "pending": wal.pending,
                "wal_errors": wal.stats.errors,
            },
            "skills": asdict(state.skills.health) if state.skills is not None else None,
            "heap": heap.health() if (heap := request.app.state.heap) is not None else None,
            "upstream": {
                "openai_configured": state.upstream.openai_configured,
                "local_policy_default": state.upstream.local_default,
                "anthropic_native": state.upstream.anthropic_native,
            },
        }
    )
