"""The reward rule as the ledger serves it: views `turn_feedback`, `turn_rewards`,
`judge_agreement` over a real ledger directory (WAL rows, then the same after ingest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from metaclaw.config import LedgerPaths, LedgerSettings
from metaclaw.ledger import WalWriter, connect, ingest
from metaclaw.scoring.combine import (
    IMPLICIT_WEIGHTS,
    reward_id,
    turn_rewards_sql,
)
from tests.helpers import rows

S = 1_000_000  # µs
T0 = 1_700_000_000 * S


def _turn(turn_id: str, session: str, done_s: int, status: str = "ok") -> dict[str, Any]:
    return {
        "turn_id": turn_id,
        "session_id": session,
        "turn_index": 0,
        "ts_start": T0 + (done_s - 1) * S,
        "ts_end": T0 + done_s * S,
        "status": status,
        "completion_text": "x",
    }


def _reward(turn_id: str, signal: str, value: float, version: str, at_s: int) -> dict[str, Any]:
    return {
        "reward_id": reward_id(turn_id, signal, version),
        "turn_id": turn_id,
        "signal": signal,
        "value": value,
        "scorer_version": version,
        "ts": T0 + at_s * S,
    }


def _feedback(
    fid: str, value: float, at_s: int, turn: str | None = None, session: str | None = None
) -> dict[str, Any]:
    return {
        "feedback_id": fid,
        "turn_id": turn,
        "session_id": session,
        "value": value,
        "ts": T0 + at_s * S,
    }


@pytest.fixture()
def paths(tmp_path: Path) -> LedgerPaths:
    paths = LedgerPaths(tmp_path / "home")
    with WalWriter(paths.wal) as wal:
        wal.append(
            "turns",
            [
                _turn("A", "s1", 10),
                _turn("B", "s1", 20),
                _turn("C", "s1", 30),
                _turn("D", "s1", 40),
                _turn("E", "s1", 50),
                _turn("F", "s1", 60),
                _turn("G", "s2", 10),
                _turn("H", "s2", 20),
                _turn("I", "s2", 22, "upstream_error"),
            ],
        )
        wal.append(
            "rewards",
            [
                _reward("A", "judge", -1.0, "judge/m/p1/m3", 100),
                _reward("A", "implicit:correction", -1.0, "implicit-v1", 100),
                _reward("B", "judge", 1.0, "judge/old/p1/m3", 100),
                _reward(
                    "B", "judge", 0.0, "judge/m/p1/m3", 200
                ),  # re-judged later: this one counts
                _reward("B", "implicit:continuation", 1.0, "implicit-v1", 100),
                _reward("C", "implicit:continuation", 1.0, "implicit-v0", 50),  # superseded version
                _reward("C", "implicit:correction", -1.0, "implicit-v1", 100),
                _reward("C", "implicit:tool_error", -1.0, "implicit-v1", 100),
                _reward("D", "implicit:continuation", 1.0, "implicit-v1", 100),
                _reward("E", "implicit:session_length", 0.0, "implicit-v1", 100),
                _reward("G", "judge", 1.0, "judge/m/p1/m3", 100),
            ],
        )
        wal.append(
            "feedback",
            [
                _feedback("f1", -1.0, 11, turn="A"),
                _feedback("f2", 1.0, 12, turn="A"),  # changed their mind: the latest counts
                _feedback("f3", 0.5, 15, session="s2"),  # → G (H not done until t=20)
                _feedback("f4", -0.5, 25, session="s2"),  # → H (I failed, so not "the" turn)
                _feedback("f5", 1.0, 5, session="s2"),  # before any turn: unresolved
                _feedback("f6", 1.0, 5, session="nope"),  # unknown session: unresolved
            ],
        )
    return paths


def _by_turn(paths: LedgerPaths, view: str) -> dict[str, dict[str, Any]]:
    return {r["turn_id"]: r for r in rows(paths, f"SELECT * FROM {view}")}


def _check(paths: LedgerPaths) -> None:
    fb = rows(
        paths, "SELECT feedback_id, turn_id, resolved_by FROM turn_feedback ORDER BY feedback_id"
    )
    assert fb == [
        {"feedback_id": "f1", "turn_id": "A", "resolved_by": "turn"},
        {"feedback_id": "f2", "turn_id": "A", "resolved_by": "turn"},
        {"feedback_id": "f3", "turn_id": "G", "resolved_by": "session"},
        {"feedback_id": "f4", "turn_id": "H", "resolved_by": "session"},
    ]
    tr = _by_turn(paths, "turn_rewards")
    assert set(tr) == {"A", "B", "C", "D", "G", "H"}  # E: weight-0 signal only; F: nothing
    summary = {t: (r["reward"], r["reward_source"], r["n_signals"]) for t, r in tr.items()}
    assert summary == {
        "A": (1.0, "explicit", 4),  # 2 feedback rows + judge + correction
        "B": (0.0, "judge", 2),  # latest judge (0) beats implicit
        "C": (-1.0, "implicit", 2),  # -1·1.0 + -1·0.5 clipped to -1; v0 row ignored
        "D": (IMPLICIT_WEIGHTS["continuation"], "implicit", 1),
        "G": (0.5, "explicit", 2),
        "H": (-0.5, "explicit", 1),
    }
    assert tr["B"]["judge_version"] == "judge/m/p1/m3" and tr["B"]["implicit_value"] == 0.5
    assert tr["C"]["implicit_kinds"] == "implicit:correction,implicit:tool_error"
    assert tr["A"]["judge_value"] == -1.0 and tr["A"]["explicit_value"] == 1.0
    agreement = _by_turn(paths, "judge_agreement")
    assert {t: r["agree"] for t, r in agreement.items()} == {"A": False, "G": True}


def test_views_over_wal_and_parquet(paths: LedgerPaths) -> None:
    _check(paths)
    report = ingest(paths, LedgerSettings())
    assert report.rows == {"turns": 9, "rewards": 11, "feedback": 6}
    _check(paths)  # the same answers from Parquet


def test_column_types(paths: LedgerPaths) -> None:
    con = connect(paths)
    try:
        types = dict(
            con.execute("SELECT column_name, column_type FROM (DESCRIBE turn_rewards)").fetchall()
        )
    finally:
        con.close()
    assert types["turn_id"] == "VARCHAR" and types["session_id"] == "VARCHAR"
    assert types["reward"] == "DOUBLE" and types["reward_source"] == "VARCHAR"
    assert types["n_signals"] == "INTEGER"


def test_another_rule_on_demand(paths: LedgerPaths) -> None:
    con = connect(paths)
    try:
        sql = turn_rewards_sql(
            priority=("judge", "implicit", "explicit"),
            implicit_weights={**IMPLICIT_WEIGHTS, "continuation": 1.0},
        )
        con.execute(f"CREATE VIEW judge_first AS {sql}")
        got = dict(con.execute("SELECT turn_id, reward FROM judge_first").fetchall())
    finally:
        con.close()
    assert got["A"] == -1.0 and got["D"] == 1.0 and got["G"] == 1.0 and got["H"] == -0.5


def test_bad_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="must order exactly"):
        turn_rewards_sql(priority=("judge", "explicit"))
    with pytest.raises(ValueError, match="within"):
        turn_rewards_sql(implicit_weights={"correction": 2.0})


def test_reward_ids_are_stable_and_distinct() -> None:
    assert reward_id("t", "judge", "v1") == reward_id("t", "judge", "v1")
    assert (
        len(
            {
                reward_id("t", "judge", "v1"),
                reward_id("t", "judge", "v2"),
                reward_id("t", "implicit:correction", "v1"),
                reward_id("u", "judge", "v1"),
            }
        )
        == 4
    )
