"""Running the proxy under uvicorn (uvloop + httptools: the proxy's overhead budget is tight).

With `proxy.workers` > 1, uvicorn's supervisor runs that many proxy processes on one listening
socket (the kernel spreads connections among them). They share what must be shared through
METACLAW_HOME: each writes its own WAL segments, and the session chain is in SQLite
(`session.py`), so a conversation continues whichever worker takes its next turn.
"""

from __future__ import annotations

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from metaclaw.config import Settings
from metaclaw.proxy.app import create_app
from metaclaw.proxy.guard import check_bind


def build_server(
    settings: Settings, host: str | None = None, port: int | None = None
) -> uvicorn.Server | Multiprocess:
    """The proxy's server (`.run()` serves); raises `OpenBindError` for a non-loopback bind
    nobody allowed. Several workers bind the port here, at once."""
    bind = host or settings.proxy.host
    check_bind(
        bind,
        keyed=bool(settings.proxy.api_keys),
        allow_open=settings.proxy.allow_open_bind,
        section="proxy",
        key_setting="proxy.api_keys",
    )
    options: dict = {
        "host": bind,
        "port": port or settings.proxy.port,
        "loop": "uvloop",
        "http": "httptools",
        "log_level": "warning",
        "access_log": False,
        "timeout_graceful_shutdown": 30,
    }
    workers = settings.proxy.workers
    if workers == 1:
        return uvicorn.Server(uvicorn.Config(create_app(settings, freeze_heap=True), **options))
    config = uvicorn.Config(f"{__name__}:worker_app", factory=True, workers=workers, **options)
    return Multiprocess(config, sockets=[config.bind_socket()])


def worker_app() -> FastAPI:
    """One worker's app: the settings are read again in the worker (same env and TOML)."""
    return create_app(Settings(), freeze_heap=True)
