"""Running the proxy under uvicorn (uvloop + httptools: the proxy's overhead budget is tight)."""

from __future__ import annotations

import uvicorn

from metaclaw.config import Settings
from metaclaw.proxy.app import create_app


def build_server(
    settings: Settings, host: str | None = None, port: int | None = None
) -> uvicorn.Server:
    config = uvicorn.Config(
        create_app(settings),
        host=host or settings.proxy.host,
        port=port or settings.proxy.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return uvicorn.Server(config)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM; in-flight turns finish and the WAL is flushed on the way out."""
    build_server(settings, host, port).run()
