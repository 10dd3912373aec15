"""Point agents at the proxy: OpenClaw's config file, or the base URL + key for any client."""

from metaclaw.connect.openclaw import (
    ConnectResult,
    OpenClawConfigError,
    connect_openclaw,
    openclaw_config_path,
    plan_openclaw,
    undo_openclaw,
)
from metaclaw.connect.targets import ProxyTarget, proxy_target

__all__ = [
    "ConnectResult",
    "OpenClawConfigError",
    "ProxyTarget",
    "connect_openclaw",
    "openclaw_config_path",
    "plan_openclaw",
    "proxy_target",
    "undo_openclaw",
]
