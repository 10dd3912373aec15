"""OpenClaw SQLite stores are untrusted input: bounded inflation, a name that stays a name."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
import zstandard

from metaclaw.replay.model import ParseOptions, Problem
from metaclaw.replay.openclaw_sqlite import connect_readonly, parse_sqlite
from tests.unit.test_replay_formats import DDL

LIMIT = 64 * 1024


def _store(path: Path, blob: bytes, declared: int | None) -> Path:
    con = sqlite3.connect(path)
    con.execute(DDL)
    con.execute(
        "INSERT INTO transcript_events VALUES ('s1', 1, NULL, 0, ?, ?, '{}')", (blob, declared)
    )
    con.commit()
    con.close()
    return path


def _bomb(size: int) -> bytes:
    """Valid JSON of `size` bytes, compressed with its size in the frame header."""
    event = b'{"type": "message", "pad": "' + b"x" * (size - 30) + b'"}'
    return zstandard.ZstdCompressor().compress(event)


@pytest.mark.parametrize("declared", [None, 100])
def test_a_zstd_bomb_is_refused_within_the_record_cap(tmp_path: Path, declared: int | None) -> None:
    blob = _bomb(16 * 1024 * 1024)
    assert len(blob) < 4096 and zstandard.frame_content_size(blob) > 16_000_000
    store = _store(tmp_path / "openclaw-agent.sqlite", blob, declared)
    items = list(parse_sqlite(store, ParseOptions(max_record_bytes=LIMIT), 1))
    problems = [i for i in items if isinstance(i, Problem)]
    assert problems and "inflates past replay.max_record_bytes" in problems[0].message


def test_an_event_within_the_cap_is_read(tmp_path: Path) -> None:
    event = {"type": "session", "id": "s1", "timestamp": "2026-01-01T00:00:00Z"}
    raw = orjson.dumps(event)
    store = _store(
        tmp_path / "openclaw-agent.sqlite", zstandard.ZstdCompressor().compress(raw), len(raw)
    )
    items = list(parse_sqlite(store, ParseOptions(max_record_bytes=LIMIT), 1))
    assert not [i for i in items if isinstance(i, Problem) and "inflates" in i.message]


def test_a_file_name_cannot_add_uri_parameters(tmp_path: Path) -> None:
    """`?mode=rwc&` in the name must stay part of the name: the store it names is opened
    read-only, and no other file (`a.sqlite`) is opened or created read-write."""
    store = _store(tmp_path / "a.sqlite?mode=rwc&", _bomb(1000), None)
    con = connect_readonly(store)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            con.execute("DELETE FROM transcript_events")
    finally:
        con.close()
    assert [p.name for p in tmp_path.iterdir()] == ["a.sqlite?mode=rwc&"]
