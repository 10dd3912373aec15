"""Format detection, discovery, OpenClaw SQLite stores and trajectory exports."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest
import zstandard

from metaclaw.replay import (
    NotALogError,
    ParseOptions,
    Problem,
    Source,
    Turn,
    detect_format,
    discover,
    partition,
)
from metaclaw.replay.openclaw_sqlite import parse_sqlite
from metaclaw.replay.trajectory import parse_trajectory

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "replay"
OPTS = ParseOptions()

# The table as OpenClaw 2026.9.6 creates it (constraints that need other tables left out).
DDL = """CREATE TABLE transcript_events (
  session_id TEXT NOT NULL, seq INTEGER NOT NULL, event_json TEXT, created_at INTEGER NOT NULL,
  event_zstd BLOB, event_utf8_bytes INTEGER, navigation_json TEXT,
  PRIMARY KEY (session_id, seq)) STRICT"""


def make_store(path: Path, *, compress_seq: int | None = None, extra: list | None = None) -> Path:
    """A store holding the rows a real OpenClaw run wrote (tests/fixtures), optionally with one
    row zstd-compressed the way OpenClaw stores large events."""
    con = sqlite3.connect(path)
    con.execute(DDL)
    rows = [json.loads(line) for line in (FIXTURES / "openclaw-sqlite-rows.jsonl").open()]
    for row in rows + (extra or []):
        text, blob, size = row["event_json"], None, None
        if row["seq"] == compress_seq:
            raw = text.encode()
            text, blob, size = None, zstandard.ZstdCompressor().compress(raw), len(raw)
        con.execute(
            "INSERT INTO transcript_events VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row["session_id"],
                row["seq"],
                text,
                row["created_at"],
                blob,
                size,
                "{}" if blob else None,
            ),
        )
    con.commit()
    con.close()
    return path


def turn_rows(items: list) -> list[dict]:
    return [i.row for i in items if isinstance(i, Turn)]


def test_sqlite_store_turns_match_what_openclaw_recorded(tmp_path: Path) -> None:
    store = make_store(tmp_path / "openclaw-agent.sqlite", compress_seq=8)
    items = list(parse_sqlite(store, OPTS, 1))
    rows = turn_rows(items)
    assert [r["turn_index"] for r in rows] == [0, 1]
    assert {r["session_id"] for r in rows} == {"e2e-s1"}
    assert {r["source"] for r in rows} == {"backfill:openclaw-sqlite"}
    assert rows[1]["request"]["messages"][0] == {"role": "user", "content": "Say hi"}
    assert rows[1]["request"]["messages"][2] == {"role": "user", "content": "And again"}
    assert rows[1]["completion_text"].startswith("Echo: "), "the compressed row was read"
    assert rows[0]["usage"]["prompt_tokens"] == 5261 and rows[0]["model"] == "fake-model"
    assert not [i for i in items if isinstance(i, Problem)]


def test_sqlite_bad_rows_are_reported_by_session_and_seq(tmp_path: Path) -> None:
    extra = [
        {"session_id": "s2", "seq": 0, "created_at": 1, "event_json": "{not json"},
        {
            "session_id": "s2",
            "seq": 1,
            "created_at": 1,
            "event_json": json.dumps(
                {
                    "type": "message",
                    "id": "a",
                    "parentId": "u",
                    "message": {"role": "assistant", "content": "x"},
                }
            ),
        },
    ]
    items = list(parse_sqlite(make_store(tmp_path / "a.sqlite", extra=extra), OPTS, 1))
    problems = [i for i in items if isinstance(i, Problem)]
    assert [p.where.rsplit("#", 1)[1] for p in problems] == ["s2:0", "s2:1"]
    assert "invalid JSON" in problems[0].message and problems[1].turns_lost == 1
    assert len(turn_rows(items)) == 2


def test_trajectory_export_from_a_real_openclaw_run() -> None:
    path = FIXTURES / "openclaw-trajectory-events.jsonl"
    assert detect_format(path) == "openclaw-trajectory"
    rows = turn_rows(list(parse_trajectory(path, OPTS, 1)))
    assert [r["turn_index"] for r in rows] == [0, 1]
    assert {r["source"] for r in rows} == {"backfill:openclaw-trajectory"}
    assert rows[0]["request"] == {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "Say hi"}],
    }
    assert rows[0]["ts_start"] == 1795648562557000 and rows[0]["ts_end"] == 1795648562758000


def test_detection_by_content(tmp_path: Path) -> None:
    assert detect_format(FIXTURES / "openclaw-v3-branches.jsonl") == "openclaw"
    assert detect_format(FIXTURES / "openai-chat.jsonl") == "openai"
    assert detect_format(make_store(tmp_path / "x.db")) == "openclaw-sqlite"
    gz = tmp_path / "chat.jsonl.gz"
    gz.write_bytes(gzip.compress((FIXTURES / "openai-chat.jsonl").read_bytes()))
    assert detect_format(gz) == "openai"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"hello world\nthis is a readme\n", "not a conversation log"),
        (b'{"name": "package", "version": "1.0"}\n', "keys name, version"),
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "not a conversation log"),
    ],
)
def test_files_that_are_not_logs_get_a_clear_error(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "thing.jsonl"
    path.write_bytes(content)
    with pytest.raises(NotALogError) as err:
        detect_format(path)
    assert reason in str(err.value) and str(path) in str(err.value)


def test_sqlite_without_transcripts_is_not_a_log(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(NotALogError, match="without a transcript_events table"):
        detect_format(path)


def test_discover_walks_directories_and_separates_errors(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    (logs / "deep" / ".openclaw").mkdir(parents=True)
    (logs / "a.jsonl").write_bytes((FIXTURES / "openai-chat.jsonl").read_bytes())
    (logs / "deep" / ".openclaw" / "events.jsonl").write_bytes(
        (FIXTURES / "openclaw-trajectory-events.jsonl").read_bytes()
    )
    (logs / "deep" / "notes.jsonl").write_text('{"todo": 1}\n')
    (logs / "README.md").write_text("# not considered")
    make_store(logs / "deep" / "openclaw-agent.sqlite")
    (tmp_path / "empty").mkdir()
    found = discover([logs, tmp_path / "missing.jsonl", tmp_path / "empty", logs / "a.jsonl"])
    assert [(Path(s.path).name, s.format) for s in found.sources] == [
        ("a.jsonl", "openai"),
        ("openclaw-agent.sqlite", "openclaw-sqlite"),
        ("events.jsonl", "openclaw-trajectory"),
    ], "top-down, sorted, no duplicates"
    assert len(found.ignored) == 1 and "notes.jsonl" in found.ignored[0]
    reasons = sorted(e.reason for e in found.errors)
    assert reasons == [
        "directory holds no conversation logs (looked for .jsonl, .ndjson, "
        ".jsonl.gz, .ndjson.gz, .sqlite, .sqlite3, .db)",
        "no such file or directory",
    ]
    with pytest.raises(ValueError, match="unknown format 'csv'"):
        discover([logs], "csv")


def test_partitions_bound_files_and_bytes() -> None:
    sources = [Source(f"/f{i}", "openai", size, 0) for i, size in enumerate([5, 5, 5, 20, 1, 1])]
    parts = partition(sources, max_files=2, max_bytes=12)
    assert [[s.path for s in p] for p in parts] == [
        ["/f0", "/f1"],
        ["/f2"],
        ["/f3"],
        ["/f4", "/f5"],
    ]
