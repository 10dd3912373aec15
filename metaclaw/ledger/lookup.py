"""Point lookups of one turn or session, at a cost that does not grow with the ledger.

Why not `connect()` + SQL: a connection decodes every WAL row in Python to build its views, so
`POST /v1/feedback` (which only asks "does this turn exist, and in which session?") cost 0.58 s
with the GIL held once the WAL held 50 MB. Here:

- WAL segments are searched as bytes for the id's exact JSON encoding (`"turn_id":"…"`, what
  `encode_line` writes): a `bytes.find` at memory speed, and only the few matching lines are
  checked (checksum) and decoded.
- Parquet files are asked through DuckDB with an equality filter; ingest writes Bloom filters on
  the lookup columns (`LOOKUP_COLUMNS`), so row groups without the id are skipped unread.

As in the reader, the WAL is listed before the manifest is loaded: a segment ingested in between
is in the manifest's files, so a row is never missed.
"""

from __future__ import annotations

import mmap
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import orjson

from metaclaw.ledger.records import parse_line
from metaclaw.ledger.schemas import DEFAULT_AGENT, TURNS
from metaclaw.ledger.storage import LedgerStorage, open_storage
from metaclaw.ledger.wal import list_segments

# Columns point lookups filter on: ingest writes a Parquet Bloom filter for each.
LOOKUP_COLUMNS: dict[str, tuple[str, ...]] = {TURNS.name: ("turn_id", "session_id")}


@dataclass(frozen=True, slots=True)
class TurnRef:
    turn_id: str
    session_id: str | None
    status: str | None
    agent_id: str


def _matches_in(data: mmap.mmap, needle: bytes, column: str, value: str) -> list[dict[str, Any]]:
    found = []
    at = data.find(needle)
    while at >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        end = data.find(b"\n", at)
        if end < 0:
            break  # an unterminated tail is not a record
        record = parse_line(data[start:end])
        if record is not None and record[0] == TURNS.name and record[1].get(column) == value:
            found.append(record[1])
        at = data.find(needle, end)
    return found


def _wal_matches(paths: Any, column: str, value: str) -> list[dict[str, Any]]:
    """`turns` rows of the WAL whose `column` equals `value` (searched as bytes)."""
    needle = b'"' + column.encode() + b'":' + orjson.dumps(value)
    found: list[dict[str, Any]] = []
    for seg in list_segments(Path(paths.wal)):
        try:
            with open(seg, "rb") as fh:
                data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:  # ingested since listing: its rows are in the manifest
            continue
        except ValueError:  # an empty segment cannot be mapped
            continue
        with data:
            found += _matches_in(data, needle, column, value)
    return found


_BASE: duckdb.DuckDBPyConnection | None = None
_BASE_LOCK = threading.Lock()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A cursor of one process-wide in-memory database: opening a database costs ~10-100 ms
    (more than the lookup itself); a cursor is cheap and safe to use from its own thread."""
    global _BASE
    with _BASE_LOCK:
        if _BASE is None:
            _BASE = duckdb.connect()
        return _BASE.cursor()


def _parquet_rows(
    store: LedgerStorage, files: list[str], sql_filter: str, params: list[Any]
) -> list[tuple[Any, ...]]:
    if not files:
        return []
    con = _cursor()
    try:
        store.register(con)
        # The typed empty row first: files written before `agent_id` existed lack the column
        # (they read as the default agent); DuckDB still reads only the four columns, filtered.
        return con.execute(
            "SELECT turn_id, session_id, status, COALESCE(agent_id, ?) FROM ("
            "SELECT NULL::VARCHAR AS turn_id, NULL::VARCHAR AS session_id, "
            "NULL::VARCHAR AS status, NULL::VARCHAR AS agent_id WHERE false "
            "UNION ALL BY NAME SELECT * FROM read_parquet(?, union_by_name=true)) "
            f"WHERE {sql_filter} LIMIT 1",
            [DEFAULT_AGENT, [store.url(f) for f in files], *params],
        ).fetchall()
    finally:
        con.close()


def find_turn(paths: Any, turn_id: str) -> TurnRef | None:
    """The turn with this id, from the WAL or the Parquet ledger; None when there is none."""
    for row in _wal_matches(paths, "turn_id", turn_id):
        return TurnRef(turn_id, row.get("session_id"), row.get("status"), _agent(row))
    store = open_storage(paths)
    files = store.load_manifest().files.get(TURNS.name, [])
    for tid, sid, status, agent in _parquet_rows(store, files, "turn_id = ?", [turn_id]):
        return TurnRef(tid, sid, status, agent)
    return None


def _agent(row: dict[str, Any]) -> str:
    return row.get("agent_id") or DEFAULT_AGENT


def session_has_completed_turn(paths: Any, session_id: str, agent_id: str) -> bool:
    """Whether the session has at least one turn with status `ok` of this agent (sessions are
    named by clients, so two agents may use the same session id)."""
    if any(
        r.get("status") == "ok" and _agent(r) == agent_id
        for r in _wal_matches(paths, "session_id", session_id)
    ):
        return True
    store = open_storage(paths)
    files = store.load_manifest().files.get(TURNS.name, [])
    return bool(
        _parquet_rows(
            store,
            files,
            "session_id = ? AND status = 'ok' AND COALESCE(agent_id, ?) = ?",
            [session_id, DEFAULT_AGENT, agent_id],
        )
    )
