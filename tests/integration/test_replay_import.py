"""`metaclaw replay` and the importer against a real ledger (WAL → Parquet → DuckDB)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metaclaw.config import LedgerPaths, Settings
from metaclaw.replay import Importer, discover
from tests.helpers import REPO, rows

FIXTURES = REPO / "tests" / "fixtures" / "replay"
REAL_V3 = Path("/work/shared/data/openclaw-sessions-v3")


def cli(
    home: Path,
    *args: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "metaclaw", "replay", *args],
        env={
            **os.environ,
            "METACLAW_HOME": str(home),
            "METACLAW_CONFIG": str(home / "no.toml"),
            "COLUMNS": "200",
            **(env or {}),
        },
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def counts(paths: LedgerPaths) -> dict[str, int]:
    got = rows(paths, "SELECT source, count(*) AS n FROM turns GROUP BY source")
    return {r["source"]: r["n"] for r in got}


def summary_value(stdout: str, label: str) -> int:
    line = next(line for line in stdout.splitlines() if label in line)
    return int(line.strip(" │|").split("│")[-1].strip())


def test_cli_imports_reports_and_is_idempotent(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = cli(home, str(FIXTURES))
    assert first.returncode == 0, first.stderr
    assert summary_value(first.stdout, "turns") == 7 + 7 + 2
    assert summary_value(first.stdout, "sessions") == 1 + 4 + 1  # conv-2 spans two lines
    assert summary_value(first.stdout, "feedback") == 3
    assert summary_value(first.stdout, "records skipped") == 3 + 5
    assert "openclaw-v3-branches.jsonl:27: parent entry 'gone' is missing" in first.stderr
    assert "openai-chat.jsonl:9: invalid JSON" in first.stderr
    assert summary_value(first.stdout, "not logs (ignored)") == 1  # the SQLite rows fixture
    paths = LedgerPaths(home)
    expected = {"backfill:openclaw": 7, "backfill:openai": 6, "backfill:openclaw-trajectory": 2}
    assert counts(paths) == expected, "the snapshot duplicate in openai-chat.jsonl is dropped"
    assert rows(paths, "SELECT count(*) AS n FROM feedback") == [{"n": 3}]
    assert not list(paths.wal.glob("*.wal")), "everything ingested into Parquet"

    again = cli(home, str(FIXTURES))
    assert again.returncode == 0
    assert summary_value(again.stdout, "files already imported") == 3
    assert summary_value(again.stdout, "turns") == 0

    (home / "replay" / "imported.jsonl").unlink()  # the resume log lost: everything re-read …
    forced = cli(home, str(FIXTURES))
    assert forced.returncode == 0
    assert summary_value(forced.stdout, "turns") == 16
    assert counts(paths) == expected, "… and ingest drops every row it already has"
    assert rows(paths, "SELECT count(*) AS n FROM feedback") == [{"n": 3}]


def test_cli_exits_non_zero_for_a_path_that_is_not_a_log(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("shopping list\n")
    result = cli(tmp_path / "home", str(junk), str(REAL_V3))
    assert result.returncode == 2
    assert f"not a log: {junk}: not a conversation log" in " ".join(result.stderr.split())
    if REAL_V3.is_dir():
        assert summary_value(result.stdout, "turns") == 12, "the good paths are still imported"
    bad_format = cli(tmp_path / "home", str(junk), "--format", "csv")
    assert bad_format.returncode == 2 and "unknown format 'csv'" in bad_format.stderr


def test_imported_rows_fill_the_turns_schema(home: Path) -> None:
    settings = Settings()
    found = discover([FIXTURES / "openclaw-v3-branches.jsonl"])
    summary = Importer(settings).import_all(found.sources)
    assert (summary.turns, summary.skipped, summary.turns_lost) == (7, 3, 1)
    got = rows(settings.paths, "SELECT * FROM turns WHERE completion_text = 'Let me look.'")
    (row,) = got
    assert row["client"] == "openai" and row["endpoint"] == "backfill"
    assert row["served_by"] == "upstream" and row["source"] == "backfill:openclaw"
    assert json.loads(row["tool_calls"])[0]["function"]["name"] == "ls"
    assert json.loads(row["request"])["messages"] == [{"role": "user", "content": "List the files"}]
    assert row["prompt_token_ids"] is None and row["completion_logprobs"] is None
    assert str(row["ts_start"]) == "2026-03-16 10:01:01+00:00"
    assert row["injected_skills"] == []


def test_since_leaves_older_turns_out(home: Path) -> None:
    settings = Settings()
    found = discover([FIXTURES / "openclaw-v3-branches.jsonl"])
    since = 1773655500 * 1_000_000  # 2026-03-16T10:05:00Z
    summary = Importer(settings, since=since).import_all(found.sources)
    assert (summary.turns, summary.before_since) == (3, 4)
    got = rows(settings.paths, "SELECT min(ts_start) AS first FROM turns")
    assert got[0]["first"].timestamp() >= 1773655500


def _sessions(directory: Path, n: int) -> None:
    directory.mkdir(parents=True)
    for i in range(n):
        lines = [
            {"type": "session", "version": 3, "id": f"s{i}"},
            {
                "type": "message",
                "id": "u",
                "parentId": None,
                "timestamp": "2026-01-01T00:00:00Z",
                "message": {"role": "user", "content": f"q{i}"},
            },
            {
                "type": "message",
                "id": "a",
                "parentId": "u",
                "timestamp": "2026-01-01T00:00:01Z",
                "message": {"role": "assistant", "content": f"a{i}"},
            },
        ]
        (directory / f"s{i:04d}.jsonl").write_text("\n".join(json.dumps(x) for x in lines))


def test_a_killed_import_resumes_where_it_stopped(tmp_path: Path) -> None:
    logs, home = tmp_path / "logs", tmp_path / "home"
    _sessions(logs, 400)
    env = {
        **os.environ,
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(tmp_path / "no.toml"),
        "METACLAW_REPLAY__BATCH_ROWS": "1",
    }  # one fsync'd append per turn: slow on purpose
    proc = subprocess.Popen(
        [sys.executable, "-m", "metaclaw", "replay", str(logs)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    resume = home / "replay" / "imported.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if resume.exists() and len(resume.read_bytes().splitlines()) >= 20:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(resume.read_bytes().splitlines())
    assert 20 <= done_before < 400, "killed mid-import"

    result = cli(home, str(logs), env={"METACLAW_REPLAY__BATCH_ROWS": "1000"})
    assert result.returncode == 0, result.stderr
    assert summary_value(result.stdout, "files already imported") >= done_before
    assert summary_value(result.stdout, "files imported") <= 400 - done_before
    assert counts(LedgerPaths(home)) == {"backfill:openclaw": 400}, "nothing lost, no duplicate"
    assert rows(LedgerPaths(home), "SELECT count(DISTINCT session_id) AS n FROM turns") == [
        {"n": 400}
    ]


@pytest.mark.skipif(not REAL_V3.is_dir(), reason="shared v3 sample data not present")
def test_real_v3_directory(tmp_path: Path) -> None:
    result = cli(tmp_path / "home", str(REAL_V3))
    assert result.returncode == 0
    assert summary_value(result.stdout, "sessions") == 12
    assert summary_value(result.stdout, "turns") == 12
    assert summary_value(result.stdout, "records skipped") == 0
