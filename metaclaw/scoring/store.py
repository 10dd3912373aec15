"""Scoring's reads and writes of the ledger (DuckDB views in, durable WAL appends out).

Why a separate module: everything else in `metaclaw/scoring` is pure or talks to the judge; the
SQL that decides *what is left to score* lives here, in one place, so idempotence is easy to
audit: a session is pending while its last turn lacks the `implicit:session_length` marker of the
current implicit version, or while it holds a judgeable turn without a judge score (of the
current judge version when re-scoring; of any version otherwise) or a reward model score
(which stands in for the judge's, except when re-scoring).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from metaclaw.config import LedgerPaths
from metaclaw.ledger.records import Row
from metaclaw.ledger.wal import append_rows
from metaclaw.scoring.transcript import TurnRecord

_PENDING_SQL = """
WITH last AS (
    SELECT session_id, turn_id FROM turns
    QUALIFY row_number() OVER (PARTITION BY session_id ORDER BY ts_start DESC, turn_id DESC) = 1
),
implicit_pending AS (
    SELECT session_id FROM last
    WHERE turn_id NOT IN (SELECT turn_id FROM rewards
                          WHERE signal = 'implicit:session_length' AND scorer_version = $iv)
),
judge_pending AS (
    SELECT DISTINCT session_id FROM turns
    WHERE $judge AND status = 'ok'
      AND (coalesce(trim(completion_text), '') <> ''
           OR coalesce(json_array_length(tool_calls), 0) > 0)
      AND turn_id NOT IN (SELECT turn_id FROM rewards
                          WHERE (signal = 'judge' AND (NOT $rescore OR scorer_version = $jv))
                             OR (signal = 'reward_model' AND NOT $rescore))
),
pending AS (
    SELECT session_id, bool_or(implicit) AS implicit FROM (
        SELECT session_id, true AS implicit FROM implicit_pending
        UNION ALL SELECT session_id, false AS implicit FROM judge_pending
    ) GROUP BY session_id
)
SELECT p.session_id, p.implicit
FROM pending p JOIN (SELECT session_id, min(ts_start) AS first FROM turns GROUP BY session_id) f
  ON f.session_id = p.session_id
ORDER BY f.first, p.session_id
"""

_TURNS_SQL = """
SELECT turn_id, session_id, turn_index, epoch_us(ts_start) AS ts_start,
       epoch_us(ts_end) AS ts_end, CAST(request AS VARCHAR) AS request, completion_text,
       CAST(tool_calls AS VARCHAR) AS tool_calls,
       finish_reason, status, http_status, error
FROM turns WHERE session_id IN (SELECT id FROM _scoring_ids)
"""


def pending_sessions(
    con: duckdb.DuckDBPyConnection,
    *,
    implicit_version: str,
    judge_version: str | None,
    rescore: bool,
) -> list[tuple[str, bool]]:
    """Sessions with something left to score, oldest first, each with whether it still needs
    implicit evaluation (False: it only waits for the judge)."""
    params = {
        "iv": implicit_version,
        "judge": judge_version is not None,
        "rescore": rescore,
        "jv": judge_version or "",
    }
    return [(r[0], bool(r[1])) for r in con.execute(_PENDING_SQL, params).fetchall()]


def _register_ids(con: duckdb.DuckDBPyConnection, ids: list[str]) -> None:
    con.register("_scoring_ids", pa.table({"id": pa.array(ids, pa.string())}))


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return None


def load_sessions(
    con: duckdb.DuckDBPyConnection, session_ids: list[str]
) -> dict[str, list[TurnRecord]]:
    """The turns of these sessions, as `TurnRecord`s."""
    _register_ids(con, session_ids)
    cur = con.execute(_TURNS_SQL)
    out: dict[str, list[TurnRecord]] = defaultdict(list)
    for (
        turn_id,
        session_id,
        turn_index,
        ts_start,
        ts_end,
        request,
        text,
        calls,
        finish,
        status,
        http_status,
        error,
    ) in cur.fetchall():
        out[session_id].append(
            TurnRecord(
                turn_id=turn_id,
                session_id=session_id,
                turn_index=turn_index,
                ts_start=ts_start / 1e6,
                ts_end=ts_end / 1e6 if ts_end is not None else None,
                request=_json(request),
                completion_text=text,
                tool_calls=_json(calls),
                finish_reason=finish,
                status=status,
                http_status=http_status,
                error=error,
            )
        )
    con.unregister("_scoring_ids")
    return dict(out)


@dataclass(frozen=True, slots=True)
class KnownReward:
    reward_id: str
    turn_id: str
    signal: str
    scorer_version: str | None


def known_rewards(con: duckdb.DuckDBPyConnection, session_ids: list[str]) -> list[KnownReward]:
    """Reward rows already in the ledger for the turns of these sessions."""
    _register_ids(con, session_ids)
    rows = con.execute(
        "SELECT r.reward_id, r.turn_id, r.signal, r.scorer_version FROM rewards r "
        "JOIN turns t ON t.turn_id = r.turn_id "
        "WHERE t.session_id IN (SELECT id FROM _scoring_ids)"
    ).fetchall()
    con.unregister("_scoring_ids")
    return [KnownReward(*r) for r in rows]


def write_rewards(paths: LedgerPaths, rows: list[Row]) -> int:
    """Durably append reward rows (one WAL segment per call); returns how many."""
    if rows:
        append_rows(paths.wal, "rewards", rows)
    return len(rows)


@dataclass(frozen=True)
class Agreement:
    """Judge–human agreement over turns with both a judge score and explicit feedback."""

    turns: int
    agree: int

    @property
    def rate(self) -> float | None:
        return self.agree / self.turns if self.turns else None

    def describe(self) -> str:
        if not self.turns:
            return "no turn has both a judge score and explicit feedback yet"
        return (
            f"{self.rate:.0%} ({self.agree}/{self.turns} turns with explicit feedback agree "
            "in sign with the judge)"
        )


def judge_agreement(con: duckdb.DuckDBPyConnection) -> Agreement:
    n, agree = con.execute(
        "SELECT count(*), coalesce(sum(CAST(agree AS INTEGER)), 0) FROM judge_agreement"
    ).fetchone() or (0, 0)
    return Agreement(int(n), int(agree))


def reward_summary(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Ledger-wide `turn_rewards` by source: turns, mean reward, and the share of ±/0 rewards."""
    cur = con.execute(
        "SELECT reward_source, count(*) AS turns, round(avg(reward), 3) AS mean, "
        "count(*) FILTER (reward > 0) AS positive, count(*) FILTER (reward = 0) AS zero, "
        "count(*) FILTER (reward < 0) AS negative FROM turn_rewards GROUP BY 1 ORDER BY 1"
    )
    columns = [d[0] for d in cur.description]
    return [dict(zip(columns, r, strict=True)) for r in cur.fetchall()]
