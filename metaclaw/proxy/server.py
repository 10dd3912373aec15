"""Running the proxy under uvicorn (uvloop + httptools: the proxy's overhead budget is tight)."""

from __future__ import annotations

import uvicorn

from metaclaw.config import Settings
from metaclaw.proxy.app import create_app
from metaclaw.proxy.guard import check_bind


def build_server(
    settings: Settings, host: str | None = None, port: int | None = None
) -> uvicorn.Server:
    """The proxy's server; raises `OpenBindError` for a non-loopback bind nobody allowed."""
    bind = host or settings.proxy.host
    check_bind(bind, keyed=bool(settings.proxy.api_keys),
               allow_open=settings.proxy.allow_open_bind, section="proxy",
               key_setting="proxy.api_keys")
    config = uvicorn.Config(
        create_app(settings),
        host=bind,
        port=port or settings.proxy.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return uvicorn.Server(config)

