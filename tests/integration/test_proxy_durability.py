"""Capture is durable and never breaks serving: kill -9 under load, and a failing ledger."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import openai

from metaclaw.config import LedgerSettings
from metaclaw.ledger import ingest
from tests.helpers import ProxyProcess, rows
from tests.stubs.upstream_server import StubUpstream


def _chat_loop(url: str, stream: bool, done: list[str], stop: threading.Event) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=10)
    while not stop.is_set():
        marker = uuid.uuid4().hex
        content = f"{marker} [[words:30]]" + (" [[chunk_delay:0.001]]" if stream else "")
        try:
            if stream:
                chunks = list(
                    client.chat.completions.create(
                        model="m", stream=True, messages=[{"role": "user", "content": content}]
                    )
                )
                assert chunks[-1].choices[0].finish_reason == "stop"
            else:
                client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": content}]
                )
        except (openai.APIError, httpx.HTTPError):
            return  # the proxy is gone
        done.append(marker)  # the client holds a complete response


def test_kill9_under_load_loses_no_completed_turn(stub: StubUpstream, tmp_path: Path) -> None:
    proxy = ProxyProcess(
        tmp_path / "home",
        {
            "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
            "METACLAW_LEDGER__WAL_ROTATE_S": "0.3",
        },
    ).start()
    done: list[str] = []
    stop = threading.Event()
    workers = [
        threading.Thread(target=_chat_loop, args=(proxy.url, i % 2 == 0, done, stop))
        for i in range(8)
    ]
    for w in workers:
        w.start()
    time.sleep(1.0)
    ingest(proxy.paths, LedgerSettings())  # some turns are Parquet, some still WAL
    time.sleep(1.0)
    proxy.kill9()
    stop.set()
    for w in workers:
        w.join(15)
    completed = set(done)
    assert len(completed) > 20, "the load ran"
    ingest(proxy.paths, LedgerSettings())
    recorded = rows(proxy.paths, "SELECT request->>'$.messages[0].content' AS c, status FROM turns")
    ok_markers = {r["c"].split()[0] for r in recorded if r["status"] == "ok"}
    missing = completed - ok_markers
    assert not missing, f"{len(missing)} completed responses have no turn"


def test_ledger_failure_never_fails_a_chat_request(stub: StubUpstream, tmp_path: Path) -> None:
    env = {
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_LEDGER__WAL_ROTATE_S": "0.1",
    }
    with ProxyProcess(tmp_path / "home", env) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
        time.sleep(0.5)  # sealed; the next turn needs a new segment file
        wal = proxy.paths.wal
        wal.rename(tmp_path / "wal-moved")
        wal.write_text("the disk is gone")
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "b"}]
        )
        assert reply.choices[0].message.content == "Echo: b"
        streamed = list(
            client.chat.completions.create(
                model="m", stream=True, messages=[{"role": "user", "content": "c"}]
            )
        )
        assert streamed[-1].choices[0].finish_reason == "stop"
        health = proxy.health()
        assert health["status"] == "ok" and health["ledger"]["failed"] == 2
        log = (proxy.home / "proxy-test.log").read_text()
        assert "LEDGER WRITE FAILED" in log
