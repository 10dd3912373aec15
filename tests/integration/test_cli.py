"""The `metaclaw` command as a user runs it: real subprocesses, real ledger, real Prefect API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from metaclaw.config import LedgerPaths
from metaclaw.ledger import append_rows
from metaclaw.ledger.records import now_micros
from tests.helpers import REPO, free_port, rows
from tests.stubs.upstream_server import StubUpstream


def metaclaw(
    home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metaclaw", *args],
        env={
            **os.environ,
            "METACLAW_HOME": str(home),
            "METACLAW_CONFIG": str(home / "metaclaw.toml"),
            **(env or {}),
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _seed(home: Path, n: int) -> list[str]:
    ids = [uuid.uuid4().hex for _ in range(n)]
    append_rows(
        LedgerPaths(home).wal,
        "turns",
        [
            {
                "turn_id": t,
                "session_id": "s",
                "turn_index": i,
                "ts_start": now_micros(),
                "usage": {"total_tokens": i},
                "status": "ok",
            }
            for i, t in enumerate(ids)
        ],
    )
    return ids


def test_sql_json(tmp_path: Path) -> None:
    ids = _seed(tmp_path, 3)
    out = metaclaw(
        tmp_path, "sql", "SELECT turn_id, usage, ts_start FROM turns ORDER BY turn_index", "--json"
    )
    assert out.returncode == 0, out.stderr
    records = json.loads(out.stdout)
    assert [r["turn_id"] for r in records] == ids
    assert records[2]["usage"] == {"total_tokens": 2}
    assert records[0]["ts_start"].startswith(time.strftime("%Y-", time.gmtime()))


def test_sql_error_is_clear(tmp_path: Path) -> None:
    out = metaclaw(tmp_path, "sql", "SELECT nope FROM turns")
    assert out.returncode == 1
    assert "query failed" in out.stderr and "nope" in out.stderr


def test_bad_config_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "metaclaw.toml").write_text("[proxy]\nport = 'x'\n")
    out = metaclaw(tmp_path, "sql", "SELECT 1")
    assert out.returncode == 2
    assert "proxy.port" in out.stderr


def test_status_counts_rows(tmp_path: Path) -> None:
    _seed(tmp_path, 4)
    out = metaclaw(tmp_path, "status", env={"METACLAW_PROXY__PORT": str(free_port())})
    assert out.returncode == 0, out.stderr
    assert "turns" in out.stdout and "4" in out.stdout
    assert "not running" in out.stdout


def test_run_ingest_against_prefect(tmp_path: Path, prefect_harness: str) -> None:
    _seed(tmp_path, 5)
    out = metaclaw(tmp_path, "run", "ingest", "--prefect-url", prefect_harness)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"] == {"turns": 5}
    assert list(LedgerPaths(tmp_path).wal.glob("*.wal")) == []
    bad = metaclaw(tmp_path, "run", "nope", "--prefect-url", prefect_harness)
    assert bad.returncode == 2 and "unknown flow 'nope'" in bad.stderr


@pytest.mark.slow
def test_up_serves_proxy_and_ingest_then_stops_cleanly(tmp_path: Path, stub: StubUpstream) -> None:
    """The README's main job: Prefect server + proxy + scheduled ingest; Ctrl-C stops all."""
    proxy_port, prefect_port = free_port(), free_port()
    env = {
        **os.environ,
        "METACLAW_HOME": str(tmp_path / "home"),
        "METACLAW_CONFIG": str(tmp_path / "none.toml"),
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        # a configured judge: this test needs no local policy server (see the embedded test)
        "METACLAW_JUDGE__BASE_URL": stub.base_url + "/v1",
        "METACLAW_JUDGE__MODEL": "stub-judge",
        "METACLAW_FLOWS__INGEST_INTERVAL_S": "5",
        "METACLAW_LEDGER__WAL_ROTATE_S": "0.5",
    }
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metaclaw",
            "up",
            "--proxy-port",
            str(proxy_port),
            "--prefect-port",
            str(prefect_port),
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{proxy_port}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{proxy_port}/v1", api_key="k", max_retries=0
        )
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hello up"}]
        )
        assert reply.choices[0].message.content == "Echo: hello up"
        paths = LedgerPaths(tmp_path / "home")
        while time.monotonic() < deadline and not paths.manifest.exists():
            time.sleep(1)  # the scheduled ingest run lands the turn as Parquet
        assert rows(paths, "SELECT completion_text FROM turns") == [
            {"completion_text": "Echo: hello up"}
        ]
        assert "turns" in paths.manifest.read_text()
        flows = httpx.post(f"http://127.0.0.1:{prefect_port}/api/flows/filter", json={}).json()
        assert "ingest" in {f["name"] for f in flows}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "Prefect UI" in out and "stopped" in out
    for port in (proxy_port, prefect_port):
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
