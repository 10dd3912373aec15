"""Hints read from a real ledger (WAL → DuckDB views): corrections from the next user message,
comments from feedback tied by turn or by session, each on the turn it is about."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from metaclaw.config import Settings
from metaclaw.ledger import WalWriter
from metaclaw.ledger.reader import connect
from metaclaw.ledger.records import now_micros
from metaclaw.scoring.hint_store import load_hints
from metaclaw.scoring.hints import CORRECTION, FEEDBACK

S = 1_000_000


def _session(sid: str, exchanges: list[tuple[str, str]], t0: int) -> list[dict[str, Any]]:
    history: list[dict[str, Any]] = []
    out = []
    for i, (user, reply) in enumerate(exchanges):
        history.append({"role": "user", "content": user})
        out.append(
            {
                "turn_id": f"{sid}-{i}",
                "session_id": sid,
                "turn_index": i,
                "ts_start": t0 + i * S,
                "ts_end": t0 + i * S + S // 2,
                "request": {"model": "m", "messages": list(history)},
                "completion_text": reply,
                "status": "ok",
                "finish_reason": "stop",
            }
        )
        history.append({"role": "assistant", "content": reply})
    return out


def test_hints_come_from_corrections_and_feedback_on_their_turns(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    t0 = now_micros() - 3600 * S
    everest = _session(
        "a",
        [
            ("How tall is Everest?", "29,032 feet."),
            ("no, use metric units", "8,849 m."),
            ("thanks!", "You're welcome."),
        ],
        t0,
    )
    other = _session(
        "b",
        [
            ("Summarise the memo.", "The memo, which was sent on Monday, ..."),
            ("What about the budget?", "It grew."),
        ],
        t0,
    )
    feedback = [
        {
            "feedback_id": "f1",
            "turn_id": "b-0",
            "session_id": None,
            "value": -1.0,
            "comment": "too long",
            "ts": t0 + 10 * S,
        },
        {
            "feedback_id": "f2",
            "turn_id": None,
            "session_id": "b",
            "value": -1.0,
            "comment": "It should give the amount",
            "ts": t0 + 20 * S,
        },  # → b-1, the latest turn
        {
            "feedback_id": "f3",
            "turn_id": "a-2",
            "session_id": None,
            "value": 1.0,
            "comment": "great",
            "ts": t0 + 30 * S,
        },  # praise: no hint
    ]
    with WalWriter(settings.paths.wal) as wal:
        wal.append("turns", everest + other)
        wal.append("feedback", feedback)
    con = connect(settings.paths)
    try:
        hints = load_hints(con, ["a-0", "a-1", "a-2", "b-0", "b-1"])
        assert load_hints(con, []) == {}
        only_b = load_hints(con, ["b-1"])
    finally:
        con.close()
    got = {tid: [(h.source, h.text, h.from_id) for h in hs] for tid, hs in hints.items()}
    assert got == {
        "a-0": [(CORRECTION, "no, use metric units", "a-1")],
        "b-0": [(FEEDBACK, "too long", "f1")],
        "b-1": [(FEEDBACK, "It should give the amount", "f2")],
    }
    assert list(only_b) == ["b-1"]
