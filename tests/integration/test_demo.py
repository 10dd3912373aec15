"""`metaclaw demo` end to end against stand-ins (the stub upstream answers and judges), and its
compliance rule; the real embedded model run is what `metaclaw demo` does by default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from metaclaw.config import LedgerPaths
from tests.helpers import REPO, free_port, rows
from tests.stubs.upstream_server import StubUpstream


def test_an_unknown_preference_is_refused_with_the_choices(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "METACLAW_HOME": str(tmp_path / "home"),
        "METACLAW_CONFIG": str(tmp_path / "x.toml"),
    }
    out = subprocess.run(
        [sys.executable, "-m", "metaclaw", "demo", "--preference", "rhymes"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "unknown preference 'rhymes'" in out.stderr and "brevity" in out.stderr


@pytest.mark.slow
def test_demo_runs_the_loop_and_reports_what_it_measured(
    stub: StubUpstream, prefect_harness: str, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = {
        **os.environ,
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(tmp_path / "x.toml"),
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_JUDGE__BASE_URL": stub.base_url + "/v1",
        "METACLAW_JUDGE__MODEL": "judge",
        "PREFECT_API_URL": prefect_harness,
    }
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "metaclaw",
            "demo",
            "--questions",
            "3",
            "--rounds",
            "1",
            "--held-out",
            "2",
            "--proxy-port",
            str(free_port()),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "held-out compliance (asked plainly, T = 0): before 0% (0/2), after 0% (0/2)" in (
        out.stdout
    )
    assert "round 1: teaching compliance 0% (0/3)" in out.stdout
    assert re.search(r"train: \d+ step\(s\)", out.stdout), out.stdout[-3000:]
    paths = LedgerPaths(home)
    # 2 held-out questions before, 3 questions + 3 corrections while teaching, 2 after
    assert rows(paths, "SELECT count(*) AS n FROM turns") == [{"n": 10}]
    assert rows(paths, "SELECT count(*) AS n FROM feedback WHERE value = -1") == [{"n": 3}]
    assert "ledger: 10 turns, 3 explicit ratings" in out.stdout
    assert "users' mean reward per served policy" in out.stdout
    assert "no promotion: the base model serves" in out.stdout  # nothing was trained
    assert "demo wall time" in out.stdout and "deploy: " in out.stdout
