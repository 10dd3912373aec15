"""The `metaclaw` command as a user runs it: real subprocesses, real ledger, real Prefect API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from metaclaw.config import LedgerPaths
from metaclaw.ledger import append_rows
from metaclaw.ledger.records import now_micros
from tests.helpers import REPO, free_port


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
    assert "costs today (UTC): user 4 calls" in out.stdout and "daily budget: none" in out.stdout


def test_run_ingest_against_prefect(tmp_path: Path, prefect_harness: str) -> None:
    _seed(tmp_path, 5)
    out = metaclaw(tmp_path, "run", "ingest", "--prefect-url", prefect_harness)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["rows"] == {"turns": 5}
    assert list(LedgerPaths(tmp_path).wal.glob("*.wal")) == []
    bad = metaclaw(tmp_path, "run", "nope", "--prefect-url", prefect_harness)
    assert bad.returncode == 2 and "unknown flow 'nope'" in bad.stderr
