"""Several proxy processes on one port (`proxy.workers`, issue 16): connections spread over
the workers, each lands the turns it serves in WAL segments of its own (fsynced before it
answers), and a conversation keeps its session whichever worker serves each turn (the hash
chain is shared through METACLAW_HOME). Real processes, official `openai` client; the workers
are killed with SIGKILL at the end, so only what was durable when acknowledged is read back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from metaclaw.config import LedgerPaths
from metaclaw.ledger.records import decode_lines
from metaclaw.ledger.wal import list_segments
from tests.helpers import REPO, free_port, rows
from tests.stubs.upstream_server import StubUpstream


def _serving_pids(paths: LedgerPaths, marker: str) -> Counter[int]:
    """Turns of the conversation per worker, from the WAL segments (named with their writer's
    pid) on disk now."""
    found: Counter[int] = Counter()
    for segment in list_segments(paths.wal):
        pid = int(segment.name.split("-")[2])
        for table, row in decode_lines(segment.read_bytes()):
            if table == "turns" and marker in str(row["request"]):
                found[pid] += 1
    return found


@pytest.mark.slow
def test_two_workers_serve_and_land_turns_of_one_session(
    stub: StubUpstream, tmp_path: Path
) -> None:
    port = free_port()
    home = tmp_path / "home"
    env = {
        **os.environ,
        "METACLAW_HOME": str(home),
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
        start_new_session=True,  # the supervisor and its workers: one group to kill
    )
    url = f"http://127.0.0.1:{port}"
    paths = LedgerPaths(home)
    marker = uuid.uuid4().hex
    try:
        heaps: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + 300  # three interpreters start on a shared machine
        while len(heaps) < 2 and time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "proxy.log").read_text()
            try:  # a new connection each time: the kernel picks a worker per connection
                health = httpx.get(url + "/healthz", timeout=2).json()
                heaps[health["pid"]] = health["heap"]
            except httpx.HTTPError:
                time.sleep(0.2)
        assert len(heaps) == 2 and proc.pid not in heaps, heaps
        # each worker froze its own start-up heap (proxy/heap.py)
        assert all(h["freezes"] >= 1 and h["frozen"] > 50_000 for h in heaps.values()), heaps

        history: list[dict[str, Any]] = [{"role": "user", "content": f"hi {marker}"}]
        sessions: set[str] = set()
        served: Counter[int] = Counter()
        turns = 0
        while len(served) < 2 and turns < 40:  # until both workers have served a turn
            with openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0) as client:
                raw = client.chat.completions.with_raw_response.create(model="m", messages=history)
            sessions.add(raw.headers["x-metaclaw-session-id"])
            history += [
                {"role": "assistant", "content": raw.parse().choices[0].message.content},
                {"role": "user", "content": f"turn {turns}"},
            ]
            turns += 1
            served = _serving_pids(paths, marker)  # acknowledged, so already on disk
        assert set(served) == set(heaps), (served, heaps)
        assert sum(served.values()) == turns, served
        assert len(sessions) == 1, sessions
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # no flush, no clean shutdown
        proc.wait(60)
        log.close()

    landed = rows(
        paths,
        "select session_id, turn_index from turns "
        f"where request::varchar like '%{marker}%' order by turn_index",
    )
    assert [r["turn_index"] for r in landed] == list(range(turns)), landed
    assert {r["session_id"] for r in landed} == sessions
