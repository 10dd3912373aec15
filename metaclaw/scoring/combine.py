"""The reward rule: judge, implicit and explicit signals → one training reward per turn.

The rule (configured by the constants below and the implicit weights registered in
`implicit.DETECTORS`; the views are plain SQL built from them):

1. Each source gives at most one value per turn, in [-1, 1]:
   - explicit: the latest feedback on the turn (a user who changes their mind is believed);
     feedback posted with only a session id belongs to the session's latest turn completed
     before the feedback arrived (view `turn_feedback`);
   - judge: the majority of the latest judge run on the turn (-1, 0 or +1);
   - reward_model: the adaptive reward model's expected reward (2 P(good) - 1) on a turn it
     was confident about, in place of the judge (`triage.py`); the latest version's;
   - implicit: Σ weight(kind) × value over the turn's implicit signals of its newest implicit
     version, clipped to [-1, 1]. Kinds with weight 0 are recorded for diagnosis only.
2. The reward is the value of the first source present in `REWARD_PRIORITY`
   (default explicit > judge > reward_model > implicit); `reward_source` names it.
3. `n_signals` counts everything behind the row: feedback rows + judge (0/1) + model (0/1) +
   weighted implicit signals. Turns with no signal at all have no row.

Why priority rather than a blend: a user's explicit verdict is ground truth for that turn, and a
judge that read the user's follow-up already folds the implicit evidence in; blending would let a
weak heuristic dilute a strong verdict. The per-source values stay in the view
(`explicit_value`, `judge_value`, `implicit_value`) for anyone who wants another rule.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from metaclaw.scoring.implicit import WEIGHTS

SOURCES = ("explicit", "judge", "reward_model", "implicit")
REQUIRED_SOURCES = ("explicit", "judge", "implicit")  # a rule may leave the reward model out
REWARD_PRIORITY: tuple[str, ...] = ("explicit", "judge", "reward_model", "implicit")

IMPLICIT_WEIGHTS: Mapping[str, float] = WEIGHTS  # one registry: implicit.DETECTORS


def reward_id(turn_id: str, signal: str, scorer_version: str) -> str:
    """The stable id of a reward row: re-running a scorer writes the same ids (ingest drops)."""
    key = f"{turn_id}\x1f{signal}\x1f{scorer_version}".encode()
    return hashlib.sha256(key).hexdigest()[:32]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


TURN_FEEDBACK_SQL = """
SELECT f.feedback_id, f.turn_id, coalesce(f.session_id, t.session_id) AS session_id,
       f.value, f.comment, f.ts, 'turn' AS resolved_by
FROM feedback f LEFT JOIN turns t ON t.turn_id = f.turn_id
WHERE f.turn_id IS NOT NULL AND (t.turn_id IS NULL OR t.agent_id = f.agent_id)
UNION ALL BY NAME
SELECT f.feedback_id, t.turn_id, f.session_id, f.value, f.comment, f.ts,
       'session' AS resolved_by
FROM (SELECT * FROM feedback WHERE turn_id IS NULL AND session_id IS NOT NULL) f
ASOF JOIN (SELECT turn_id, session_id, agent_id, coalesce(ts_end, ts_start) AS done_at
           FROM turns WHERE status = 'ok') t
  ON f.session_id = t.session_id AND f.agent_id = t.agent_id AND f.ts >= t.done_at
"""
"""Explicit feedback tied to turns of the agent that posted it: by turn id, or by session (its
latest completed turn of that agent: clients name sessions, so two agents may share an id). The
proxy already refuses another agent's turn; this keeps feedback it stored while the ledger could
not answer from counting on another agent's turn."""


def turn_rewards_sql(
    priority: Sequence[str] = REWARD_PRIORITY,
    implicit_weights: Mapping[str, float] = IMPLICIT_WEIGHTS,
) -> str:
    """The `turn_rewards` view for a rule (the registered view uses the module's constants)."""
    order = list(priority)
    known = sorted(s for s in order if s != "reward_model")
    if known != sorted(REQUIRED_SOURCES) or order.count("reward_model") > 1:
        raise ValueError(
            f"reward priority must order exactly {REQUIRED_SOURCES} (and optionally "
            f"reward_model), got {tuple(order)}"
        )
    bad = {k: w for k, w in implicit_weights.items() if not 0.0 <= float(w) <= 1.0}
    if bad:
        raise ValueError(f"implicit weights must be within [0, 1]: {bad}")
    weights = (
        ", ".join(
            f"({_literal('implicit:' + kind)}, {float(w)!r})"
            for kind, w in implicit_weights.items()
        )
        or "(NULL, 0.0)"
    )
    alias = {"explicit": "e", "judge": "j", "reward_model": "m", "implicit": "i"}
    reward = "coalesce(" + ", ".join(f"{alias[s]}.value" for s in order) + ")"
    source = (
        "CASE " + " ".join(f"WHEN {alias[s]}.value IS NOT NULL THEN '{s}'" for s in order) + " END"
    )
    model_n = "CASE WHEN m.value IS NULL THEN 0 ELSE 1 END" if "reward_model" in order else "0"
    present = " OR ".join(f"{alias[s]}.value IS NOT NULL" for s in order)
    return f"""
WITH explicit AS (
    SELECT turn_id, arg_max(value, ts) AS value, count(*) AS n
    FROM turn_feedback GROUP BY turn_id
),
judge AS (
    SELECT turn_id, arg_max(value, ts) AS value, arg_max(scorer_version, ts) AS version
    FROM rewards WHERE signal = 'judge' GROUP BY turn_id
),
model AS (
    SELECT turn_id, arg_max(value, ts) AS value, arg_max(scorer_version, ts) AS version
    FROM rewards WHERE signal = 'reward_model' GROUP BY turn_id
),
implicit_version AS (
    SELECT turn_id, arg_max(scorer_version, ts) AS version
    FROM rewards WHERE signal LIKE 'implicit:%' GROUP BY turn_id
),
implicit AS (
    SELECT r.turn_id, greatest(-1.0, least(1.0, sum(r.value * w.weight))) AS value,
           count(*) AS n, string_agg(r.signal, ',' ORDER BY r.signal) AS kinds
    FROM rewards r
    JOIN implicit_version v ON r.turn_id = v.turn_id AND r.scorer_version = v.version
    JOIN (VALUES {weights}) AS w(signal, weight) ON r.signal = w.signal
    WHERE w.weight > 0
    GROUP BY r.turn_id
)
SELECT t.turn_id, t.session_id,
       CAST(greatest(-1.0, least(1.0, {reward})) AS DOUBLE) AS reward,
       {source} AS reward_source,
       CAST(coalesce(e.n, 0) + CASE WHEN j.value IS NULL THEN 0 ELSE 1 END + {model_n}
            + coalesce(i.n, 0) AS INTEGER) AS n_signals,
       CAST(e.value AS DOUBLE) AS explicit_value,
       CAST(j.value AS DOUBLE) AS judge_value,
       j.version AS judge_version,
       CAST(i.value AS DOUBLE) AS implicit_value,
       i.kinds AS implicit_kinds,
       CAST(m.value AS DOUBLE) AS model_value,
       m.version AS model_version
FROM turns t
LEFT JOIN explicit e ON e.turn_id = t.turn_id
LEFT JOIN judge j ON j.turn_id = t.turn_id
LEFT JOIN model m ON m.turn_id = t.turn_id
LEFT JOIN implicit i ON i.turn_id = t.turn_id
WHERE {present}
"""


TURN_REWARDS_SQL = turn_rewards_sql()

JUDGE_AGREEMENT_SQL = """
SELECT turn_id, session_id, judge_value, explicit_value, judge_version,
       sign(judge_value) = sign(explicit_value) AS agree
FROM turn_rewards
WHERE judge_value IS NOT NULL AND explicit_value IS NOT NULL
"""
"""Judge–human calibration: one row per turn with both a judge score and explicit feedback; the
judge agrees when its sign equals the sign of the feedback value (0 agrees only with 0)."""

VIEWS: dict[str, str] = {
    "turn_feedback": TURN_FEEDBACK_SQL,
    "turn_rewards": TURN_REWARDS_SQL,
    "judge_agreement": JUDGE_AGREEMENT_SQL,
}
"""The derived views scoring provides, in creation order (the package root registers them)."""
