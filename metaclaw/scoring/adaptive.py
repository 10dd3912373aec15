"""Training the reward model online from the ledger's labels, and reading the one in force.

Labels: one per turn, from `turn_rewards`' per-source columns in the order of trust — the
user's explicit feedback, else the judge's verdict, else the implicit signals — each weighted by
its source (`reward_model.*_weight`) and a judge verdict also by how decisive its panel was
(`decisiveness`: a 2–1 verdict is a noisier label than a 3–0 one, and fitting both alike makes
the model as unsure as its noisiest labels); a zero (no evidence either way) is not a label, and the
model's own `reward_model` rows never are (it must not learn from itself). A retrain happens
when there is no model yet and `min_labels` exist, when `retrain_new_labels` labels have landed
since the current one, or when `retrain_interval_s` has passed and any have. A hash of each
turn id holds `holdout_share` of the labels out; the model in force is the one fitted on the
rest, so its held-out figures are about that very model.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import orjson

from metaclaw.config import RewardModelSettings, Settings
from metaclaw.ledger.reader import connect
from metaclaw.scoring.reward_features import FEATURE_VERSION, LEXICAL, Embedder, features
from metaclaw.scoring.reward_metrics import holdout_report
from metaclaw.scoring.reward_model import LogisticModel, Predictions, fit, predict
from metaclaw.scoring.reward_store import ModelInfo, current_info, load_model, save
from metaclaw.scoring.store import load_sessions
from metaclaw.scoring.transcript import TurnContext, assemble

_LABELS_SQL = """
WITH judge_votes AS (
    SELECT turn_id, arg_max(votes, ts) AS votes FROM rewards WHERE signal = 'judge'
    GROUP BY turn_id
)
SELECT r.turn_id, r.session_id,
       CASE WHEN r.explicit_value IS NOT NULL THEN r.explicit_value
            WHEN r.judge_value IS NOT NULL THEN r.judge_value
            ELSE r.implicit_value END AS value,
       CASE WHEN r.explicit_value IS NOT NULL THEN 'explicit'
            WHEN r.judge_value IS NOT NULL THEN 'judge'
            ELSE 'implicit' END AS source,
       CASE WHEN r.explicit_value IS NULL AND r.judge_value IS NOT NULL
            THEN CAST(v.votes AS VARCHAR) END AS judge_votes
FROM turn_rewards r JOIN turns t ON t.turn_id = r.turn_id
LEFT JOIN judge_votes v ON v.turn_id = r.turn_id
WHERE coalesce(r.explicit_value, r.judge_value, r.implicit_value) IS NOT NULL
  AND coalesce(r.explicit_value, r.judge_value, r.implicit_value) <> 0
"""


@dataclass(frozen=True, slots=True)
class Label:
    turn_id: str
    session_id: str
    value: float
    source: str  # explicit | judge | implicit
    margin: int | None = None  # judge labels: votes for the verdict minus valid votes against


def panel_margin(votes_json: str | None, verdict: float) -> int | None:
    """How far the judge's majority led (3–0 → 3, 2–1 → 1, a single vote → 1), read from the
    judge row's `votes` details; None when the row records no panel."""
    if votes_json is None:
        return None
    try:
        details = orjson.loads(votes_json)
    except orjson.JSONDecodeError:
        return None
    votes = details.get("votes") if isinstance(details, dict) else None
    if not isinstance(votes, list):
        return None
    sign = int(np.sign(verdict))
    valid = [v for v in votes if isinstance(v, int) and not isinstance(v, bool)]
    return sum(v == sign for v in valid) - sum(v != sign for v in valid)


def decisiveness(margin: int, vote_accuracy: float) -> float:
    """What a verdict whose majority led by `margin` votes is worth next to a sure label.

    With independent votes each right with probability q, Bayes makes the majority right with
    probability r = q^d / (q^d + (1 - q)^d) for a lead of d votes, whatever the panel's size;
    a ±1 label right with probability r carries (2r - 1) of the truth's signal in expectation,
    and 2r - 1 = tanh(d · logit(q) / 2). At q = 0.8: 3–0 → 0.97, 2–1 (or one vote) → 0.6."""
    if margin <= 0:
        return 0.0
    return math.tanh(margin * math.log(vote_accuracy / (1.0 - vote_accuracy)) / 2.0)


def label_weight(label: Label, rm: RewardModelSettings) -> float:
    """A label's weight in the fit: its source's trust (`reward_model.*_weight`) times how sure
    the label is — a fractional value counts for its size, a judge verdict for how decisive
    its panel was (`decisiveness`; a verdict whose panel was not recorded counts as one vote)."""
    size = min(1.0, abs(label.value))
    if label.source == "explicit":
        return rm.explicit_weight * size
    if label.source == "judge":
        lead = 1 if label.margin is None else label.margin
        return rm.judge_weight * size * decisiveness(lead, rm.judge_vote_accuracy)
    return rm.implicit_weight * size


def count_labels(con: duckdb.DuckDBPyConnection) -> int:
    row = con.execute(f"SELECT count(*) FROM ({_LABELS_SQL})").fetchone()
    return int(row[0]) if row else 0


def load_labels(con: duckdb.DuckDBPyConnection, limit: int) -> list[Label]:
    """The most recent `limit` labels (by the turn's start)."""
    rows = con.execute(
        f"SELECT l.* FROM ({_LABELS_SQL}) l JOIN turns t ON t.turn_id = l.turn_id "
        "ORDER BY t.ts_start DESC, l.turn_id LIMIT $limit",
        {"limit": limit},
    ).fetchall()
    return [
        Label(turn_id, session_id, value, source, panel_margin(votes, value))
        for turn_id, session_id, value, source, votes in rows
    ]


def held_out(turn_id: str, share: float) -> bool:
    digest = hashlib.blake2b(turn_id.encode(), digest_size=8, person=b"rm-holdout").digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def embedder_for(settings: Settings) -> Embedder:
    """The static MiniLM table the skills library uses (loaded once per process)."""
    from metaclaw.skills.embedding import get_embedder

    cache = settings.skills.embeddings_dir or settings.paths.embeddings
    return get_embedder("static-minilm", cache)


def label_contexts(con: duckdb.DuckDBPyConnection, labels: Sequence[Label]) -> list[TurnContext]:
    """Each label's turn in its conversation (labels whose turn has no reply are dropped)."""
    records = load_sessions(con, sorted({lb.session_id for lb in labels}))
    by_turn = {
        c.turn.turn_id: c for sid, recs in records.items() for c in assemble(sid, recs).turns
    }
    return [by_turn[lb.turn_id] for lb in labels if lb.turn_id in by_turn]


def train(
    contexts: Sequence[TurnContext],
    labels: Sequence[Label],
    rm: RewardModelSettings,
    embedder: Embedder,
    labels_in_ledger: int,
) -> tuple[LogisticModel, ModelInfo] | None:
    """Fit on the labels not held out, report on the rest; None if a class is missing."""
    start = time.perf_counter()
    by_turn = {lb.turn_id: lb for lb in labels}
    contexts = [c for c in contexts if c.turn.turn_id in by_turn]
    chosen = [by_turn[c.turn.turn_id] for c in contexts]
    x = features(contexts, embedder)
    y = np.array([lb.value > 0 for lb in chosen], np.float64)
    w = np.array([label_weight(lb, rm) for lb in chosen])
    test = np.array([held_out(lb.turn_id, rm.holdout_share) for lb in chosen], bool)
    fit_rows = ~test & (w > 0)
    if len(set(y[fit_rows])) < 2:
        return None
    model = fit(x[fit_rows], y[fit_rows], w[fit_rows], l2=rm.l2, keep=len(LEXICAL))
    seconds = time.perf_counter() - start
    report = None
    if test.any():
        p = predict(model, x[test]).p
        sources = [lb.source for lb, t in zip(chosen, test, strict=True) if t]
        report = holdout_report(y[test], p, sources, rm.confidence)
    info = ModelInfo(
        version=f"rm/{FEATURE_VERSION}/{model.digest}",
        trained_at=time.time(),
        labels=labels_in_ledger,
        train_turns=int(fit_rows.sum()),
        seconds=round(seconds, 3),
        sources=dict(Counter(lb.source for lb, f in zip(chosen, fit_rows, strict=True) if f)),
        judge_margins={
            str(lead): n
            for lead, n in sorted(
                Counter(
                    1 if lb.margin is None else lb.margin
                    for lb, f in zip(chosen, fit_rows, strict=True)
                    if f and lb.source == "judge"
                ).items()
            )
        },
        holdout=report,
    )
    return model, info


@dataclass
class Refresh:
    """What `refresh` did: the model in force afterwards, and whether it is new."""

    info: ModelInfo | None
    retrained: bool
    labels: int
    why: str


def due(current: ModelInfo | None, labels: int, rm: RewardModelSettings, now: float) -> str:
    """Why a retrain is due now ("" when it is not)."""
    if labels < rm.min_labels:
        return ""
    if current is None:
        return f"first model ({labels} labels)"
    new = labels - current.labels
    if new >= rm.retrain_new_labels:
        return f"{new} new labels"
    if new > 0 and now - current.trained_at >= rm.retrain_interval_s:
        return f"schedule ({new} new labels)"
    return ""


def refresh(settings: Settings, *, now: float | None = None, force: bool = False) -> Refresh:
    """Retrain when due (see the module's docstring); returns the model in force."""
    rm = settings.reward_model
    directory = settings.paths.reward_models
    current = current_info(directory)
    if not rm.enabled:
        return Refresh(None, False, 0, "disabled")
    con = connect(settings.paths)
    try:
        labels_now = count_labels(con)
        why = due(current, labels_now, rm, time.time() if now is None else now)
        if force and not why and labels_now >= rm.min_labels:
            why = "forced"
        if not why:
            return Refresh(current, False, labels_now, "not due")
        labels = load_labels(con, rm.max_labels)
        contexts = label_contexts(con, labels)
    finally:
        con.close()
    trained = train(contexts, labels, rm, embedder_for(settings), labels_now)
    if trained is None:
        return Refresh(current, False, labels_now, "labels hold one class only")
    model, info = trained
    save(directory, model, info)
    return Refresh(info, True, labels_now, why)


def predict_contexts(
    settings: Settings, info: ModelInfo, contexts: Sequence[TurnContext]
) -> Predictions:
    """The model in force on these turns."""
    model = load_model(settings.paths.reward_models, info)
    return predict(model, features(contexts, embedder_for(settings)))


def status_line(settings: Settings) -> str:
    """One line for `metaclaw status`: the model in force and its held-out figures."""
    if not settings.reward_model.enabled:
        return "reward model: disabled (every turn is judged)"
    info = current_info(settings.paths.reward_models)
    if info is None:
        return (
            f"reward model: none yet (trains once {settings.reward_model.min_labels} labels "
            "exist; until then every turn is judged)"
        )
    h = info.holdout
    figures = "no held-out labels"
    if h is not None:
        figures = (
            f"held-out AUC {_fmt(h.auc)}, accuracy {_fmt(h.accuracy)} ({h.turns} turns), vs "
            f"humans {_fmt(h.human_accuracy)} ({h.human_turns}), ECE {_fmt(h.ece)}, "
            f"confident share {_fmt(h.coverage)} at {_fmt(h.confident_accuracy)} accuracy"
        )
    return f"reward model: {info.version} ({info.train_turns} labels); {figures}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
