"""The session chain's SQLite store with several proxy processes on one METACLAW_HOME
(`proxy.workers`, issue 16): workers start together, and one may be writing while another
creates the store; a worker must wait for the file then, not die at start-up."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from metaclaw.proxy.session import ChainStore


def test_a_store_opened_while_another_worker_writes_waits_for_it(tmp_path: Path) -> None:
    path = tmp_path / "sessions.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("PRAGMA journal_mode=WAL")
    other.execute("BEGIN IMMEDIATE")  # another worker, in the middle of creating the store
    release = threading.Timer(0.5, lambda: other.execute("COMMIT"))
    release.start()
    try:
        store = ChainStore(path, max_size=100)
    finally:
        release.join()
        other.close()
    assert store.put(b"d" * 16, "sess-1") is None  # the file is free: written at once
    assert store.find([b"d" * 16]) == {b"d" * 16: "sess-1"}
    store.close()
