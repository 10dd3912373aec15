"""Reading hints from the ledger: the I/O half of `hints.py`.

Hints are not stored: they are derived on demand from what the ledger already holds — the
sessions of the turns asked about (the user's next message after each reply) and the feedback
tied to those turns (view `turn_feedback`, so session-only feedback counts too). Deriving keeps
one source of truth: a better extractor (a new `HINT_VERSION`) applies to all history at once,
and nothing has to be kept in step with the turns.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import duckdb
import pyarrow as pa

from metaclaw.scoring.hints import Hint, hints_from_feedback, hints_from_session
from metaclaw.scoring.store import load_sessions
from metaclaw.scoring.transcript import assemble


def load_hints(con: duckdb.DuckDBPyConnection, turn_ids: Iterable[str]) -> dict[str, list[Hint]]:
    """Every hint about these turns, by turn id (corrections first, then comments by time).

    `con` is a ledger connection (`metaclaw.ledger.reader.connect`).
    """
    wanted = set(turn_ids)
    if not wanted:
        return {}
    con.register("_hint_turns", pa.table({"id": pa.array(sorted(wanted), pa.string())}))
    try:
        sessions = [
            r[0]
            for r in con.execute(
                "SELECT DISTINCT session_id FROM turns "
                "WHERE turn_id IN (SELECT id FROM _hint_turns)"
            ).fetchall()
        ]
        cur = con.execute(
            "SELECT feedback_id, turn_id, session_id, value, comment FROM turn_feedback "
            "WHERE turn_id IN (SELECT id FROM _hint_turns) ORDER BY ts, feedback_id"
        )
        names = [d[0] for d in cur.description]
        feedback = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    finally:
        con.unregister("_hint_turns")
    out: dict[str, list[Hint]] = defaultdict(list)
    for session_id, turns in sorted(load_sessions(con, sessions).items()):
        for hint in hints_from_session(assemble(session_id, turns)):
            if hint.turn_id in wanted:
                out[hint.turn_id].append(hint)
    for hint in hints_from_feedback(feedback):
        out[hint.turn_id].append(hint)
    return dict(out)
