"""Start the policy server as a supervised child process (for `metaclaw up`, demos, tests).

A separate process keeps torch's threads and memory out of the proxy and out of Prefect, and
lets a crash of the model server never take capture down with it.
"""

from __future__ import annotations

import sys

from metaclaw.config import LedgerPaths
from metaclaw.supervisor import OFFLINE_ENV, Child, wait_healthy

FIRST_START_TIMEOUT_S = 600.0  # the first start converts the packaged model (~30-60 s)


def start_policy_server(
    paths: LedgerPaths,
    port: int,
    *,
    host: str = "127.0.0.1",
    env: dict[str, str] | None = None,
    timeout_s: float = FIRST_START_TIMEOUT_S,
) -> Child:
    """`metaclaw policy-server` in its own process group; returns once /healthz is 200."""
    argv = [sys.executable, "-m", "metaclaw", "policy-server", "--host", host, "--port", str(port)]
    child = Child(
        "policy server", argv, {**OFFLINE_ENV, **(env or {})}, paths.logs / "policy-server.log"
    )
    try:
        wait_healthy(
            f"http://{host}:{port}/healthz", child, timeout_s, lambda r: r.status_code == 200
        )
    except BaseException:
        child.stop()
        raise
    return child
