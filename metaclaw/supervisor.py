"""Child processes of `metaclaw up`: the Prefect server and the proxy, started and stopped cleanly.

Each child runs in its own process group so Ctrl-C reaches it once, through us, and a second
`up` never finds an orphan holding its port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from metaclaw.config import LedgerPaths

OFFLINE_ENV = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "LANCEDB_LOG": "error",
}


def prefect_env(prefect_home: Path, api_url: str | None = None) -> dict[str, str]:
    """Environment for anything that talks to Prefect: telemetry off, state under our home."""
    env = {
        **OFFLINE_ENV,
        "PREFECT_HOME": str(prefect_home.resolve()),
        # Heartbeats every 30 s (the minimum) so a dead run is marked Crashed within ~90 s.
        "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
        # A temporary server (`metaclaw run` with no `up`) needs longer than the 20 s default
        # to start on a busy 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def apply_env(env: dict[str, str]) -> None:
    """Set variables for this process before Prefect is imported (it reads them at import)."""
    os.environ.update(env)


class Child:
    """A supervised child process."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_file: Path) -> None:
        self.name = name
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_file, "ab")  # noqa: SIM115 - lives as long as the child
        self.log_file = log_file
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, wait, then SIGKILL whatever is left."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def wait_healthy(
    url: str, child: Child, timeout: float, ok: Callable[[httpx.Response], bool]
) -> None:
    """Poll `url` until `ok`; fail early with the child's log tail if it dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not child.alive():
            tail = child.log_file.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{tail}")
        with contextlib.suppress(httpx.HTTPError):
            if ok(httpx.get(url, timeout=2)):
                return
        time.sleep(0.25)
    raise RuntimeError(
        f"{child.name} not healthy at {url} after {timeout:.0f}s; see {child.log_file}"
    )


def start_prefect_server(paths: LedgerPaths, port: int, timeout: float = 90.0) -> Child:
    argv = [
        sys.executable,
        "-m",
        "prefect",
        "server",
        "start",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--analytics-off",
    ]
    env = {**prefect_env(paths.prefect), **prefect_server_guard_env(port)}
    child = Child("prefect server", argv, env, paths.logs / "prefect.log")
    wait_healthy(
        f"http://127.0.0.1:{port}/api/health", child, timeout, lambda r: r.status_code == 200
    )
    return child


def prefect_server_guard_env(port: int) -> dict[str, str]:
    """Prefect's server defaults are CORS `*` and no CSRF check, so any web page the user opens
    could start flow runs (e.g. a backfill of arbitrary files). Only the UI's own origin may
    read responses, and every state-changing request needs a CSRF token (Prefect's own client
    fetches one; a cross-site form or `fetch` cannot)."""
    return {
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": f"http://127.0.0.1:{port}",
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
    }


def start_proxy(paths: LedgerPaths, port: int) -> Child:
    argv = [sys.executable, "-m", "metaclaw", "proxy", "--port", str(port)]
    child = Child("proxy", argv, dict(OFFLINE_ENV), paths.logs / "proxy.log")
    # a loaded 2-core machine takes 5-40 s to start it, longer with `proxy.workers` > 1 (each
    # worker imports the whole stack at once); one worker answering means the port serves
    wait_healthy(f"http://127.0.0.1:{port}/healthz", child, 60, lambda r: r.status_code == 200)
    return child
