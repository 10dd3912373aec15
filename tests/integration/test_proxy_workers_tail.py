"""The proxy's tail latency (issue 16): the garbage collector's full passes stalled the event loop.

A full (generation 2) collection walks every object the process tracks, holding the GIL; with
the start-up heap (FastAPI, aiohttp, LanceDB, pyarrow, the skill index: ~165,000 objects in a
proxy process) each pass cost the event loop 45+ ms of CPU, and every request in flight waited:
the proxy's p99 (bench/proxy_overhead.py --tail). A serving proxy freezes that heap once its
start-up is over (at start and once the skill library is loaded), so a full pass walks only
what serving allocated since.

The proxy app is served in this process (real uvicorn, real HTTP, official `openai` client,
the skill library loading in the background as in production), so the test can time a full
pass itself: in CPU time of the collecting thread, which a busy machine does not inflate.

With several workers (`proxy.workers`) the session chain's SQLite file has several writers: a
chain write that waits for another worker's lock must not hold the event loop meanwhile.
"""

from __future__ import annotations

import gc
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from metaclaw.config import Settings, SkillsSettings, UpstreamSettings
from metaclaw.proxy.app import create_app
from metaclaw.proxy.session import SESSIONS_FILE
from tests.served_app import ServedApp
from tests.stubs.upstream_server import StubUpstream


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Whatever the proxy froze in this (the test) process goes back to the collector after."""
    yield
    gc.unfreeze()


def _full_pass_cpu_ms() -> float:
    began = time.thread_time()
    gc.collect()
    return (time.thread_time() - began) * 1000


@pytest.mark.slow  # the skill library's first load takes most of it
def test_a_full_collection_skips_the_proxys_start_up_heap(
    stub: StubUpstream, tmp_path: Path, unfrozen: None
) -> None:
    upstream = UpstreamSettings(base_url=stub.base_url + "/v1")
    settings = Settings(home=tmp_path / "home", upstream=upstream)
    with ServedApp(create_app(settings, freeze_heap=True)) as served:
        deadline = time.monotonic() + 120  # the skill library loads in the background
        while time.monotonic() < deadline:
            heap = httpx.get(served.url + "/healthz", timeout=10).json()["heap"]
            if heap["freezes"] == 2:
                break
            time.sleep(0.2)
        assert heap["freezes"] == 2, heap  # at start-up, and once the skill library is up
        assert heap["frozen"] > 50_000, heap
        with openai.OpenAI(base_url=served.url + "/v1", api_key="k", max_retries=0) as client:
            for i in range(50):
                reply = client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"hi {i} [[words:20]]"}]
                )
                assert reply.choices[0].message.content
        # the best of three: a pass is a few ms here; the whole heap took 45+ ms (one core)
        cpu_ms = min(_full_pass_cpu_ms() for _ in range(3))
    assert cpu_ms < 15, f"a full collection took {cpu_ms:.1f} ms of CPU"


def test_a_chain_write_waiting_for_another_workers_lock_leaves_the_loop_serving(
    stub: StubUpstream, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    upstream = UpstreamSettings(base_url=stub.base_url + "/v1")
    settings = Settings(home=home, upstream=upstream, skills=SkillsSettings(enabled=False))
    with ServedApp(create_app(settings)) as served:
        client = openai.OpenAI(base_url=served.url + "/v1", api_key="k", max_retries=0)

        def chat(i: int) -> str | None:
            reply = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"hi {i} [[words:5]]"}]
            )
            return reply.choices[0].message.content

        assert chat(0)
        # another worker in the middle of a chain write: it holds SQLite's write lock, so
        # this proxy's chain writes wait for it (up to their busy timeout) and then give up
        other = sqlite3.connect(home / SESSIONS_FILE, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        probes: list[float] = []
        try:
            with ThreadPoolExecutor(1) as pool, httpx.Client(base_url=served.url) as probe:
                chats = pool.submit(lambda: [chat(i) for i in range(1, 4)])
                while not chats.done():
                    began = time.perf_counter()
                    assert probe.get("/healthz", timeout=10).status_code == 200
                    probes.append(time.perf_counter() - began)
                    time.sleep(0.005)
                assert all(chats.result())  # served all the same; the chain is a convenience
        finally:
            other.execute("ROLLBACK")
            other.close()
            client.close()
    # each of the three writes waits 250 ms for the lock: on the event loop that was 750 ms
    # without an answer to anyone; off it, /healthz answers as usual meanwhile
    assert max(probes) < 0.15, f"/healthz took {max(probes) * 1000:.0f} ms while a write waited"
    assert len(probes) >= 5, probes
