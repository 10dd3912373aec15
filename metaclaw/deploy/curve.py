"""The learning curve: what users' turns said about each policy that served them, in order.

Why this and not the training loss: the question a user asks is "did it get better for me?".
The ledger answers it directly: every live turn records the checkpoint that served it
(`turns.policy_checkpoint`, NULL = base weights) and every scored turn has a reward
(`turn_rewards`). Grouped per served checkpoint, in the order they first served, with the gate's
verdict beside it, that is the curve: one row per policy, the mean reward its users gave, and
whether the gate measured it better than the one before. Replayed turns are left out (they were
not served by any of these policies).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb

from metaclaw.config import LedgerPaths
from metaclaw.ledger import connect

CURVE_SQL = """
WITH served AS (
    SELECT coalesce(t.policy_checkpoint, 'base') AS checkpoint,
           count(*) AS turns,
           count(r.reward) AS rated,
           avg(r.reward) AS mean_reward,
           min(t.ts_start) AS first_served
    FROM turns t LEFT JOIN turn_rewards r USING (turn_id)
    WHERE t.served_by = 'policy' AND coalesce(t.source, 'live') = 'live'
    GROUP BY 1
),
verdicts AS (
    SELECT checkpoint_id, status, eval_metrics,
           row_number() OVER (PARTITION BY checkpoint_id ORDER BY ts DESC) AS latest
    FROM checkpoints WHERE status IN ('promoted', 'rejected', 'rolled_back')
)
SELECT s.checkpoint, s.turns, s.rated, s.mean_reward, v.status, v.eval_metrics
FROM served s LEFT JOIN verdicts v ON v.checkpoint_id = s.checkpoint AND v.latest = 1
ORDER BY s.first_served
"""

BAR_WIDTH = 20


@dataclass(frozen=True)
class CurvePoint:
    checkpoint: str  # "base" for the base weights
    turns: int
    rated: int
    mean_reward: float | None  # in [-1, 1]; None when none of its turns has a reward yet
    status: str | None  # the gate's latest verdict (None for the base)
    wins: int | None = None
    losses: int | None = None
    ties: int | None = None


def _test(metrics: Any) -> dict[str, Any]:
    if isinstance(metrics, str):
        try:
            metrics = json.loads(metrics)
        except ValueError:
            return {}
    test = metrics.get("test") if isinstance(metrics, dict) else None
    return test if isinstance(test, dict) else {}


def read_curve(con: duckdb.DuckDBPyConnection) -> list[CurvePoint]:
    points = []
    for checkpoint, turns, rated, mean, status, metrics in con.execute(CURVE_SQL).fetchall():
        test = _test(metrics)
        points.append(
            CurvePoint(
                checkpoint,
                int(turns),
                int(rated),
                None if mean is None else float(mean),
                status,
                test.get("wins"),
                test.get("losses"),
                test.get("ties"),
            )
        )
    return points


def load_curve(paths: LedgerPaths) -> list[CurvePoint]:
    con = connect(paths)
    try:
        return read_curve(con)
    finally:
        con.close()


def bar(reward: float | None, width: int = BAR_WIDTH) -> str:
    """A reward in [-1, 1] as a bar of `width` cells (empty = −1, full = +1)."""
    if reward is None:
        return "·" * width
    filled = round((max(-1.0, min(1.0, reward)) + 1) / 2 * width)
    return "█" * filled + "░" * (width - filled)


def curve_markdown(points: list[CurvePoint]) -> str:
    """The curve as a Markdown table (the deploy flow's `learning-curve` artifact)."""
    lines = [
        "## Learning curve: users' rewards per served policy",
        "",
        "Mean reward of the live turns each policy served (−1 … +1), oldest first, with the "
        "gate's verdict (wins–losses–ties of the candidate against the policy before it).",
        "",
        "| policy | turns (rated) | mean reward | | gate |",
        "|---|---|---|---|---|",
    ]
    for p in points:
        mean = "–" if p.mean_reward is None else f"{p.mean_reward:+.2f}"
        gate = p.status or ("–" if p.checkpoint == "base" else "serving, not yet judged")
        if p.wins is not None:
            gate += f" ({p.wins}–{p.losses}–{p.ties})"
        lines.append(
            f"| `{p.checkpoint}` | {p.turns} ({p.rated}) | {mean} | `{bar(p.mean_reward)}` "
            f"| {gate} |"
        )
    if not points:
        lines.append("| – | no turns served by the local policy yet | | | |")
    return "\n".join(lines) + "\n"
