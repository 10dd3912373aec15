"""What the ledger says about training so far, and which turns are still to be trained.

The ledger is the trainer's only memory: `train_steps.turn_ids` of every earlier step (ok or
failed) define what is consumed, the ok steps' `metrics.state_path` are the states the learner
may resume from (metaclaw.training.lineage picks one by the checkpoint registry), and the reward
baseline is an EMA over the steps' metrics. Nothing lives in a side
file, so a crash mid-step leaves exactly the last good state to resume from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import duckdb

# The turn columns training reads, joined with the reward contract view `turn_rewards`
# (turn_id, session_id, reward DOUBLE in [-1, 1], reward_source, n_signals). Turns already named
# by any train_steps row are left out (anti-join), as are failed/disconnected turns. `held_out`
# marks the deploy gate's evaluation split (metaclaw.deploy.split): never trained on.
CANDIDATES_SQL = """
WITH consumed AS (SELECT DISTINCT unnest(turn_ids) AS turn_id FROM train_steps)
SELECT $held_out AS held_out, t.turn_id, t.ts_start, t.served_by, t.source, t.request,
       t.completion_text, t.tool_calls, t.prompt_token_ids, t.completion_token_ids,
       t.completion_logprobs, t.policy_checkpoint, t.skill_set_version, r.reward, r.reward_source,
       t.client, t.sampling_temperature, t.sampling_top_p, t.injected_text
FROM turns t
LEFT JOIN turn_rewards r ON r.turn_id = t.turn_id
LEFT JOIN consumed c ON c.turn_id = t.turn_id
WHERE c.turn_id IS NULL AND t.status = 'ok'
  AND (r.reward IS NOT NULL OR ($distill AND t.served_by = 'policy'))
ORDER BY t.ts_start, t.turn_id
"""

CURRENT_SKILL_SET_SQL = """
SELECT greatest(coalesce((SELECT max(skill_set_version) FROM skill_events), -1),
                coalesce((SELECT max(skill_set_version) FROM turns), -1))
"""

STEPS_SQL = "SELECT step_id, step, turn_ids, metrics, ts FROM train_steps ORDER BY step, ts"


@dataclass
class StepRecord:
    step_id: str
    step: int
    turn_ids: list[str]
    metrics: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.metrics.get("status") == "ok"


@dataclass
class TrainHistory:
    steps: list[StepRecord] = field(default_factory=list)
    checkpoint_ids: set[str] = field(default_factory=set)

    @property
    def consumed(self) -> set[str]:
        return {t for s in self.steps for t in s.turn_ids}

    @property
    def next_step(self) -> int:
        return max((s.step for s in self.steps), default=0) + 1

    def baseline(self, decay: float) -> float:
        """Bias-corrected EMA of each ok step's mean RL reward (0 before the first).

        An all-time mean never forgets: once the policy improves, every turn of the improved
        policy looks better than the stale baseline and gets a positive advantage. The EMA
        follows the current policy's reward level (horizon ~1/(1−decay) steps)."""
        value, weight = 0.0, 0.0
        for s in self.steps:
            n = int(s.metrics.get("rl_n", 0) or 0)
            if not s.ok or n <= 0:
                continue
            mean = float(s.metrics.get("rl_reward_sum", 0.0)) / n
            value = decay * value + (1 - decay) * mean
            weight = decay * weight + (1 - decay)
        return value / weight if weight else 0.0

    def missing_candidates(self) -> list[StepRecord]:
        """Ok steps whose candidate row never landed (a crash between the two appends)."""
        return [
            s
            for s in self.steps
            if s.ok
            and s.metrics.get("checkpoint_id")
            and s.metrics["checkpoint_id"] not in self.checkpoint_ids
        ]


def _json(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        return json.loads(value)
    return dict(value or {})


def read_history(con: duckdb.DuckDBPyConnection) -> TrainHistory:
    steps = [
        StepRecord(step_id=r[0], step=int(r[1]), turn_ids=list(r[2] or []), metrics=_json(r[3]))
        for r in con.execute(STEPS_SQL).fetchall()
    ]
    ids = {r[0] for r in con.execute("SELECT DISTINCT checkpoint_id FROM checkpoints").fetchall()}
    return TrainHistory(steps=steps, checkpoint_ids=ids)


def read_candidates(
    con: duckdb.DuckDBPyConnection, *, distill: bool, held_out_sql: str = "false"
) -> list[dict[str, Any]]:
    """Unconsumed ok turns with a reward (or policy turns, for distillation), oldest first;
    `held_out_sql` is a boolean SQL expression over the turn `t` (`deploy.split.held_out_sql`:
    held-out sessions and their prompt digests) marking evaluation turns."""
    sql = CANDIDATES_SQL.replace("$distill", "true" if distill else "false")
    cur = con.execute(sql.replace("$held_out", held_out_sql))
    columns = [d[0] for d in cur.description]
    seen: set[str] = set()
    rows = []
    for values in cur.fetchall():
        row = dict(zip(columns, values, strict=True))
        if row["turn_id"] not in seen:  # one row per turn even if a view repeats it
            seen.add(row["turn_id"])
            rows.append(row)
    return rows


def current_skill_set_version(con: duckdb.DuckDBPyConnection) -> int | None:
    """The newest skill-set version anywhere in the ledger; None when skills never changed."""
    (value,) = con.execute(CURRENT_SKILL_SET_SQL).fetchone() or (-1,)
    return None if value is None or value < 0 else int(value)
