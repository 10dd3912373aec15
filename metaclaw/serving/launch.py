"""Start the policy server as a supervised child process (for `metaclaw up`, demos, tests).

A separate process keeps torch's threads and memory out of the proxy and out of Prefect, and
lets a crash of the model server never take capture down with it.
"""

from __future__ import annotations

import sys

from metaclaw.config import LedgerPaths, Settings
from metaclaw.endpoints import policy_engine
from metaclaw.supervisor import OFFLINE_ENV, Child, wait_healthy

FIRST_START_TIMEOUT_S = 600.0  # the first start converts the packaged model (~30-60 s)
HUB_OFFLINE = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def start_policy_server(
    paths: LedgerPaths,
    port: int,
    *,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    timeout_s: float = FIRST_START_TIMEOUT_S,
    online: bool = False,
) -> Child:
    """`metaclaw policy-server` in its own process group; returns once /healthz is 200.

    `online`: the Tinker engine, which talks to the service and fetches its model's tokenizer
    from the Hugging Face hub, so the hub is not switched off for it."""
    argv = [sys.executable, "-m", "metaclaw", "policy-server", "--host", host, "--port", str(port)]
    base = {k: v for k, v in OFFLINE_ENV.items() if not (online and k in HUB_OFFLINE)}
    child = Child("policy server", argv, {**base, **(env or {})}, paths.logs / "policy-server.log")
    try:
        wait_healthy(
            f"http://{host}:{port}/healthz", child, timeout_s, lambda r: r.status_code == 200
        )
    except BaseException:
        child.stop()
        raise
    return child


def start_configured_policy_server(settings: Settings) -> Child:
    """The policy server `settings` describe (address, engine), for `metaclaw up` and the demo."""
    return start_policy_server(
        settings.paths,
        settings.policy.port,
        host=settings.policy.host,
        online=policy_engine(settings) == "tinker",
    )
