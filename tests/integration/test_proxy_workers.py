"""Several proxy processes on one port (`proxy.workers`, issue 16): connections spread over
the workers, and a conversation keeps its session whichever worker serves each turn (the hash
chain is shared through METACLAW_HOME). Real processes, official `openai` client."""

from __future__ import annotations

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

from tests.helpers import REPO, free_port
from tests.stubs.upstream_server import StubUpstream


@pytest.mark.slow
def test_two_workers_share_the_port_and_the_sessions(stub: StubUpstream, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "METACLAW_HOME": str(tmp_path / "home"),
        "METACLAW_CONFIG": str(tmp_path / "none.toml"),
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_PROXY__WORKERS": "2",
    }
    log = open(tmp_path / "proxy.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "metaclaw", "proxy", "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        pids: set[int] = set()
        deadline = time.monotonic() + 300  # three interpreters start on a shared machine
        while len(pids) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "proxy.log").read_text()
            try:  # a new connection each time: the kernel picks a worker per connection
                pids.add(httpx.get(url + "/healthz", timeout=2).json()["pid"])
            except httpx.HTTPError:
                time.sleep(0.2)
        assert len(pids) == 2 and proc.pid not in pids, pids
        marker = uuid.uuid4().hex
        history = [{"role": "user", "content": f"hi {marker}"}]
        sessions = set()
        for turn in range(6):
            with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client:
                raw = client.chat.completions.with_raw_response.create(model="m", messages=history)
                sessions.add(raw.headers["x-metaclaw-session-id"])
            history += [
                {"role": "assistant", "content": raw.parse().choices[0].message.content},
                {"role": "user", "content": f"turn {turn}"},
            ]
        assert len(sessions) == 1, sessions
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()
