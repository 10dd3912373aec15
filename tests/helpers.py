"""Test helpers that run real things: the proxy as a subprocess, and ledger queries."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from metaclaw.config import LedgerPaths
from metaclaw.ledger import query

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ProxyProcess:
    """`python -m metaclaw proxy` in a subprocess with its own METACLAW_HOME."""

    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = Path(home)
        self.port = free_port()
        self.env = {
            **os.environ,
            "METACLAW_HOME": str(self.home),
            "METACLAW_CONFIG": str(self.home / "none.toml"),
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def paths(self) -> LedgerPaths:
        return LedgerPaths(self.home)

    def start(self) -> ProxyProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = open(self.home / "proxy-test.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "metaclaw", "proxy", "--port", str(self.port)],
            env=self.env,
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60  # a loaded 2-core machine starts it in 5-40 s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.close()
                raise RuntimeError(f"proxy exited: {(self.home / 'proxy-test.log').read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()  # never leave a half-started proxy behind (an orphan holds ~350 MB)
        raise RuntimeError("proxy did not become healthy within 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def health(self) -> dict[str, Any]:
        return httpx.get(self.url + "/healthz", timeout=5).json()

    def turns(self, where: str = "true", params: str = "*") -> list[dict[str, Any]]:
        """Rows of `turns` (WAL included) as dicts, oldest first."""
        return rows(self.paths, f"SELECT {params} FROM turns WHERE {where} ORDER BY ts_start")


def metaclaw_cli(home: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """`metaclaw ARGS` as a user runs it against `home` (no config file); its stdout, after
    asserting it succeeded."""
    done = subprocess.run(
        [sys.executable, "-m", "metaclaw", *args],
        env={
            **os.environ,
            "METACLAW_HOME": str(home),
            "METACLAW_CONFIG": str(home / "none.toml"),
            **(env or {}),
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def rows(paths: LedgerPaths, sql: str) -> list[dict[str, Any]]:
    columns, values = query(paths, sql)
    return [dict(zip(columns, v, strict=True)) for v in values]


def gate_record(tripped: list[str]) -> dict[str, Any]:
    """The `guards` part of a verdict as the gate records it (`Evaluation.metrics()`), built
    from the gate's own `Guard`, so readers are tested against the writer's shape."""
    from dataclasses import asdict

    from metaclaw.deploy.guards import Guard

    names = ["non_finite", "kl_from_base", "degenerate", "length_blowup"]
    return {"guards": [asdict(Guard(n, n in tripped, 0.0, 1.0, "")) for n in names]}
