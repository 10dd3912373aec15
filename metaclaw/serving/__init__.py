"""The local policy server: the embedded model + promoted LoRA behind an OpenAI-compatible API.

`server.build_engine(settings)` loads the model; `app.create_app(engine, ...)` is the ASGI app;
`server.serve(settings)` runs it (`metaclaw policy-server`); `launch.start_policy_server(paths,
port)` runs it as a supervised child. `defaults` says which roles use it when nothing is
configured. Importing this package does not import torch (the engine loads lazily), so `up`
and the proxy can ask about defaults cheaply.
"""

from typing import Any

from metaclaw.endpoints import Endpoint, local_policy_endpoint, policy_base_url, upstream_endpoint
from metaclaw.serving.defaults import describe_defaults, needs_policy_server

_LAZY = {
    "AdapterError": "metaclaw.serving.engine",
    "EngineError": "metaclaw.serving.engine",
    "Policy": "metaclaw.serving.engine",
    "PolicyEngine": "metaclaw.serving.engine",
    "Result": "metaclaw.serving.engine",
    "build_engine": "metaclaw.serving.server",
    "serve": "metaclaw.serving.server",
    "start_policy_server": "metaclaw.serving.launch",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'metaclaw.serving' has no attribute {name!r}")


__all__ = [
    "AdapterError",
    "Endpoint",
    "EngineError",
    "Policy",
    "PolicyEngine",
    "Result",
    "build_engine",
    "describe_defaults",
    "local_policy_endpoint",
    "needs_policy_server",
    "policy_base_url",
    "serve",
    "start_policy_server",
    "upstream_endpoint",
]
