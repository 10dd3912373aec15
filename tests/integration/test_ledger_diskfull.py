"""Fault injection: the ledger on a real 2 MB tmpfs that fills up. The writer fails loudly (the
waiting caller gets ENOSPC), keeps running, loses no acknowledged row, and resumes once space
returns; an ingest on the full disk fails without leaving temp files or losing segments."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from metaclaw.config import LedgerPaths, LedgerSettings
from metaclaw.ledger import WalWriter, ingest, query
from metaclaw.ledger.records import now_micros
from metaclaw.ledger.wal import list_segments
from tests.helpers import ProxyProcess
from tests.stubs.upstream_server import StubUpstream

SETTINGS = LedgerSettings(compact_grace_s=0)


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a 2 MB tmpfs here (needs root/CAP_SYS_ADMIN): {done.stderr.strip()}"
        )
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _turn(i: int) -> dict:
    return {
        "turn_id": uuid.uuid4().hex,
        "session_id": "s",
        "turn_index": i,
        "ts_start": now_micros(),
        "status": "ok",
        "completion_text": "x" * 900,
    }


def _stored(paths: LedgerPaths) -> list[str]:
    return [r[0] for r in query(paths, "SELECT turn_id FROM turns")[1]]


def test_disk_full_fails_loudly_loses_nothing_and_resumes(small_disk: Path) -> None:
    paths = LedgerPaths(small_disk / "home")
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (1024 * 1024))  # what we delete to give space back
    acked: list[str] = []
    with WalWriter(paths.wal, rotate_s=3600) as wal:
        failure: BaseException | None = None
        for i in range(5000):
            row = _turn(i)
            try:
                wal.submit("turns", row).result(10)
            except OSError as exc:
                failure = exc
                break
            acked.append(row["turn_id"])
        assert isinstance(failure, OSError) and failure.errno == errno.ENOSPC
        assert 100 < len(acked) < 1100 and wal.stats.errors == 1
        with pytest.raises(OSError):  # still full: the next append fails too, loudly
            wal.submit("turns", _turn(-1)).result(10)

        with pytest.raises(OSError):  # ingest cannot write Parquet on the full disk
            ingest(paths, SETTINGS)
        leftovers = [p.name for p in paths.ledger.rglob("*.tmp")]
        assert leftovers == [], "a failed Parquet write leaves no temp file"
        assert list_segments(paths.wal), "the segments are kept for the next ingest"
        assert sorted(_stored(paths)) == sorted(acked), "readers still see every acked row"

        filler.unlink()  # space returns
        later = [_turn(10_000 + i) for i in range(20)]
        wal.append("turns", later, timeout=10)  # the writer resumed on its own
        acked += [r["turn_id"] for r in later]
    report = ingest(paths, SETTINGS)
    assert report.total_rows == len(acked)
    stored = _stored(paths)
    assert sorted(stored) == sorted(acked), "every acknowledged row exactly once, nothing else"
    assert list_segments(paths.wal) == []


@pytest.mark.slow  # a proxy process + an upstream stand-in
def test_proxy_keeps_answering_on_a_full_disk_and_resumes(
    small_disk: Path, tmp_path: Path, stub: StubUpstream
) -> None:
    """The proxy's WAL on the small disk (the rest of its home elsewhere, so its log can still
    be written): with the disk full every request is still answered, /healthz counts the
    failed captures, every turn the proxy counted as recorded is in the ledger, and recording
    resumes once space returns."""
    home = tmp_path / "home"
    home.mkdir()
    (small_disk / "wal").mkdir()
    (home / "wal").symlink_to(small_disk / "wal")
    filler = small_disk / "filler"
    # Fill the disk, then give back room for a few turns.
    with open(filler, "wb", buffering=0) as fh, contextlib.suppress(OSError):
        while fh.write(b"\0" * 65536):
            pass
    os.truncate(filler, filler.stat().st_size - 16 * 1024)
    env = {
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_PROXY__CAPTURE_TIMEOUT_S": "30",
    }
    with ProxyProcess(home, env) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)

        def chat(text: str) -> str:
            reply = client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": text + " " + "y" * 1500}]
            )
            return reply.choices[0].message.content or ""

        sent = 0
        while proxy.health()["ledger"]["failed"] == 0:
            assert chat(f"before-{sent}").startswith(f"Echo: before-{sent}")
            sent += 1
            assert sent < 40, "the disk never filled"
        for i in range(3):  # still full: answered, not recorded
            assert chat(f"full-{i}").startswith(f"Echo: full-{i}")
        health = proxy.health()
        assert health["ledger"]["wal_errors"] >= 1 and health["ledger"]["failed"] >= 3
        filler.unlink()  # space returns
        for i in range(3):
            assert chat(f"after-{i}").startswith(f"Echo: after-{i}")
        recorded = proxy.health()["ledger"]["recorded"]
        got = proxy.turns(params="request->>'$.messages[0].content' AS t")
        texts = [r["t"].split()[0] for r in got]
    assert len(texts) == recorded == len(set(texts)), "every recorded turn exactly once"
    assert {"after-0", "after-1", "after-2"} <= set(texts), "recording resumed"
    assert not any(t.startswith("full-") for t in texts)
