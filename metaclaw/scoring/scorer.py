"""One scoring run: find what is left to score, score it in session batches, write rewards.

The unit of work is a batch of sessions (a turn is only judged in its session's context). For
each batch: load the turns, place them in their conversations (`transcript.assemble`), emit the
implicit signals whose evidence is final, judge the turns that are ready (a next state exists,
or the session is idle) and not yet judged, then append the new reward rows. Every row id is a
hash of (turn, signal, scorer version), and ids already in the ledger are dropped before writing,
so a re-run writes nothing; a turn whose judge calls failed simply stays pending.

`score()` runs a whole pass without Prefect (benchmarks, scripts); `flows/score.py` runs the
same steps as tasks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import openai

from metaclaw.config import JudgeSettings, Settings
from metaclaw.costs.calls import record_calls
from metaclaw.costs.store import daily_budget
from metaclaw.ledger.reader import connect
from metaclaw.ledger.records import Row, now_micros
from metaclaw.scoring.adaptive import Refresh, predict_contexts, refresh
from metaclaw.scoring.combine import reward_id
from metaclaw.scoring.implicit import IMPLICIT_VERSION, detect
from metaclaw.scoring.judge import (
    CallBudget,
    Judge,
    JudgeEndpoint,
    JudgeOutcome,
    judge_endpoint,
    outcome_details,
    scorer_version,
)
from metaclaw.scoring.prompt import JudgeCase, build_case
from metaclaw.scoring.reward_store import ModelInfo, current_info
from metaclaw.scoring.store import (
    Agreement,
    KnownReward,
    judge_agreement,
    known_rewards,
    load_sessions,
    pending_sessions,
    reward_summary,
    write_rewards,
)
from metaclaw.scoring.transcript import Session, TurnContext, assemble
from metaclaw.scoring.triage import Decision, triage
from metaclaw.scoring.votes import majority_reason

BATCH_SESSIONS = 200
MAX_ERRORS_REPORTED = 10

log = logging.getLogger("metaclaw.scoring")


@dataclass
class ScorePlan:
    """What one run will do: the pending sessions in batches, and the scorer versions."""

    batches: list[list[str]]
    judge_version: str | None
    implicit_version: str
    rescore: bool
    now: float
    implicit_pending: set[str] = field(default_factory=set)
    reward_model: ModelInfo | None = None  # the model that triages the judge, if any
    judge_votes: int = 0  # votes per turn this run: judge.votes, fewer near the daily budget
    budget_note: str | None = None  # why the daily budget cut the judge's votes, if it did

    @property
    def sessions(self) -> int:
        return sum(len(b) for b in self.batches)

    def worth_loading(self, index: int, budget_left: int) -> bool:
        """A batch that only waits for the judge is not read once the call budget is spent
        (re-scoring a long history must not reload all of it on every run)."""
        return budget_left >= self.judge_votes or any(
            s in self.implicit_pending for s in self.batches[index]
        )


@dataclass
class BatchReport:
    sessions: int = 0
    turns: int = 0
    rewards_written: int = 0
    implicit_rows: int = 0
    implicit_kinds: Counter[str] = field(default_factory=Counter)
    judged: int = 0  # turns that got a verdict this run
    judge_values: Counter[str] = field(default_factory=Counter)
    judge_failed: int = 0  # attempted, no verdict (errors or no valid vote): retried next run
    judge_skipped: int = 0  # not attempted (budget spent or judge misconfigured)
    judge_waiting: int = 0  # not judgeable yet (no next state, session still active)
    model_scored: int = 0  # turns the reward model scored instead of the judge
    model_uncertain: int = 0  # turns the model sent to the judge (below its confidence)
    model_audited: int = 0  # confident turns judged anyway (the audit sample)
    model_confirmed: int = 0  # uncertain turns settled by one vote agreeing with the model
    agreement_sum: float = 0.0  # Σ share of votes backing each verdict (inter-vote agreement)
    unanimous: int = 0
    ties: int = 0
    calls: int = 0
    retries: int = 0
    failed_calls: int = 0
    invalid_votes: int = 0
    judge_seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def merge(self, other: BatchReport) -> None:
        for name in (f.name for f in fields(self)):
            mine, value = getattr(self, name), getattr(other, name)
            if isinstance(mine, Counter):
                mine.update(value)
            elif isinstance(mine, list):
                mine.extend(value[: max(0, MAX_ERRORS_REPORTED - len(mine))])
            else:
                setattr(self, name, mine + value)


@dataclass
class ScoreReport:
    judge: str | None  # the judge scorer version, None when no LLM judge is configured
    implicit_version: str
    sessions_pending: int
    totals: BatchReport
    budget: int
    agreement: Agreement | None = None
    rewards_by_source: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    reward_model: dict[str, Any] | None = None  # the model in force and its held-out figures
    budget_note: str | None = None  # the daily budget's cut-over, when it held the judge back

    def to_dict(self) -> dict[str, Any]:
        t = self.totals
        return {
            "judge": self.judge,
            "implicit_version": self.implicit_version,
            "sessions_pending": self.sessions_pending,
            **{
                f.name: getattr(t, f.name)
                for f in fields(t)
                if not isinstance(getattr(t, f.name), Counter)
            },
            "implicit_kinds": dict(t.implicit_kinds),
            "judge_values": dict(t.judge_values),
            "inter_vote_agreement": round(t.agreement_sum / t.judged, 4) if t.judged else None,
            "budget": self.budget,
            "judge_human_agreement": self.agreement.rate if self.agreement else None,
            "judge_human_turns": self.agreement.turns if self.agreement else 0,
            "rewards_by_source": self.rewards_by_source,
            "seconds": round(self.seconds, 3),
            "reward_model": self.reward_model,
            "daily_budget": self.budget_note,
        }


def current_judge(
    settings: Settings, judge: JudgeSettings | None = None
) -> tuple[JudgeEndpoint | None, str | None]:
    """The judge and its scorer version (under `judge`, default the configured settings)."""
    endpoint = judge_endpoint(settings)
    return endpoint, scorer_version(endpoint, judge or settings.judge) if endpoint else None


def judge_at(settings: Settings, votes: int) -> JudgeSettings:
    """The judge's settings at `votes` per turn; 0 (no calls today) leaves them as configured,
    which only names the version turns are pending for."""
    return settings.judge.model_copy(update={"votes": votes}) if votes else settings.judge


def plan(
    settings: Settings,
    *,
    rescore: bool = False,
    now: float | None = None,
    batch_sessions: int = BATCH_SESSIONS,
) -> ScorePlan:
    """Find the sessions with something left to score at the current scorer versions, and how
    many votes the daily budget allows the judge (`metaclaw.costs.budget`)."""
    budget = daily_budget(settings)
    votes = budget.judge_votes(settings.judge.votes)
    note = budget.note()
    if note:
        log.warning("%s", note)
    _, version = current_judge(settings, judge_at(settings, votes))
    con = connect(settings.paths)
    try:
        pending = pending_sessions(
            con, implicit_version=IMPLICIT_VERSION, judge_version=version, rescore=rescore
        )
    finally:
        con.close()
    ids = [sid for sid, _ in pending]
    batches = [ids[i : i + batch_sessions] for i in range(0, len(ids), batch_sessions)]
    return ScorePlan(
        batches,
        version,
        IMPLICIT_VERSION,
        rescore,
        time.time() if now is None else now,
        {sid for sid, imp in pending if imp},
        current_info(settings.paths.reward_models) if settings.reward_model.enabled else None,
        votes,
        note,
    )


# -- pure steps -----------------------------------------------------------------------------


def _row(
    turn_id: str,
    signal: str,
    value: float,
    version: str,
    reason: str | None,
    details: dict[str, Any] | None,
    ts: int,
) -> Row:
    return {
        "reward_id": reward_id(turn_id, signal, version),
        "turn_id": turn_id,
        "signal": signal,
        "value": float(value),
        "votes": details,
        "reason": reason,
        "scorer_version": version,
        "ts": ts,
    }


def implicit_rows(sessions: list[Session], now: float, idle_s: float, ts: int) -> list[Row]:
    rows: list[Row] = []
    for session in sessions:
        for turn_id, signals in detect(session, idle=session.idle(now, idle_s)).items():
            rows += [
                _row(turn_id, s.signal, s.value, IMPLICIT_VERSION, s.reason, s.details, ts)
                for s in signals
            ]
    return rows


def judge_ready(
    sessions: list[Session], known: list[KnownReward], plan: ScorePlan, idle_s: float
) -> tuple[list[TurnContext], int]:
    """Turns to judge now, oldest first; and how many must wait for their next state.
    A turn the reward model scored counts as judged (unless re-scoring)."""
    done = {
        k.turn_id
        for k in known
        if (k.signal == "judge" and (not plan.rescore or k.scorer_version == plan.judge_version))
        or (k.signal == "reward_model" and not plan.rescore)
    }
    ready: list[TurnContext] = []
    waiting = 0
    for session in sessions:
        idle = session.idle(plan.now, idle_s)
        for ctx in session.turns:
            if not ctx.turn.has_reply or ctx.turn.turn_id in done:
                continue
            if ctx.next_state is not None or idle:
                ready.append(ctx)
            else:
                waiting += 1
    ready.sort(key=lambda c: (c.turn.ts_start, c.turn.turn_id))
    return ready, waiting


def judge_rows(
    outcomes: list[JudgeOutcome], judge: Judge, ts: int, report: BatchReport
) -> list[Row]:
    rows: list[Row] = []
    for outcome in outcomes:
        verdict = outcome.verdict
        if verdict is None:
            if outcome.skipped:
                report.judge_skipped += 1
            else:
                report.judge_failed += 1
                if len(report.errors) < MAX_ERRORS_REPORTED:
                    report.errors.append(f"turn {outcome.case.turn_id}: {outcome.error}")
            continue
        report.judged += 1
        report.judge_values[f"{verdict.value:+d}" if verdict.value else "0"] += 1
        report.agreement_sum += verdict.agreement
        report.unanimous += verdict.agreement == 1.0 and verdict.valid == len(outcome.votes)
        report.ties += verdict.tie
        rows.append(
            _row(
                outcome.case.turn_id,
                "judge",
                verdict.value,
                judge.version,
                majority_reason(outcome.votes, verdict),
                outcome_details(outcome, judge),
                ts,
            )
        )
    return rows


def model_rows(decisions: list[Decision], version: str, ts: int) -> list[Row]:
    """`reward_model` rows for the turns the model takes (value: the expected reward 2p - 1)."""
    return [
        _row(
            d.turn_id,
            "reward_model",
            2.0 * d.p - 1.0,
            version,
            f"reward model: P(good) = {d.p:.2f}, confident",
            d.details(version),
            ts,
        )
        for d in decisions
        if d.route == "model"
    ]


def triage_ready(
    settings: Settings,
    info: ModelInfo,
    ready: list[TurnContext],
    ts: int,
    report: BatchReport,
) -> tuple[list[TurnContext], list[Row], dict[str, Decision]]:
    """Split the ready turns: the model scores the confident ones, the judge gets the rest."""
    rm = settings.reward_model
    predictions = predict_contexts(settings, info, ready)
    decisions = triage([c.turn.turn_id for c in ready], predictions, rm.confidence, rm.audit_share)
    report.model_scored += sum(d.route == "model" for d in decisions)
    report.model_uncertain += sum(d.route == "uncertain" for d in decisions)
    report.model_audited += sum(d.route == "audit" for d in decisions)
    to_judge = {d.turn_id: d for d in decisions if d.to_judge}
    return (
        [c for c in ready if c.turn.turn_id in to_judge],
        model_rows(decisions, info.version, ts),
        to_judge,
    )


# -- one batch ------------------------------------------------------------------------------


async def _panels(
    judge: Judge,
    cases: list[JudgeCase],
    budget: CallBudget,
    confirm: Mapping[str, Decision],
    report: BatchReport,
) -> list[JudgeOutcome]:
    """A whole panel for each case, except those in `confirm` (the model was unsure of them):
    one vote first, and the rest of the panel only where that vote does not agree with the
    model's lean (`Decision.confirmed_by`). A first vote that failed leaves its turn pending."""
    full = [c for c in cases if c.turn_id not in confirm]
    first = [c for c in cases if c.turn_id in confirm]
    outcomes, probes = await asyncio.gather(
        judge.judge_all(full, budget), judge.judge_all(first, budget, votes=1)
    )
    agreed = [confirm[o.case.turn_id].confirmed_by(o.verdict) for o in probes]
    settled = [o for o, ok in zip(probes, agreed, strict=True) if ok]
    unsettled = [o for o, ok in zip(probes, agreed, strict=True) if not ok and o.votes]
    report.model_confirmed += len(settled)
    more = await judge.judge_all(
        [o.case for o in unsettled],
        budget,
        votes=judge.settings.votes - 1,
        earlier={o.case.turn_id: o.votes for o in unsettled},
    )
    return [*outcomes, *settled, *more, *(o for o in probes if not o.votes)]


async def _judge(
    endpoint: JudgeEndpoint,
    settings: Settings,
    judge_settings: JudgeSettings,
    contexts: list[TurnContext],
    budget: CallBudget,
    client: openai.AsyncOpenAI | None,
    ts: int,
    report: BatchReport,
    confirm: Mapping[str, Decision],
) -> list[Row]:
    async with Judge(endpoint, judge_settings, client) as judge:
        try:
            cases = [build_case(c) for c in contexts]
            outcomes = await _panels(judge, cases, budget, confirm, report)
        finally:  # every answered call was billed, whatever became of the run
            record_calls(settings.paths, judge.call_rows)
        stats = judge.stats
        report.calls += stats.calls
        report.retries += stats.retries
        report.failed_calls += stats.failed_calls
        report.invalid_votes += stats.invalid_votes
        report.judge_seconds += stats.seconds
        if judge.broken and judge.broken not in report.errors:
            report.errors.insert(0, judge.broken)
        return judge_rows(outcomes, judge, ts, report)


def score_batch(
    settings: Settings,
    plan: ScorePlan,
    session_ids: list[str],
    budget_left: int,
    client: openai.AsyncOpenAI | None = None,
) -> BatchReport:
    """Score one batch of sessions and write its new reward rows (idempotent)."""
    report = BatchReport(sessions=len(session_ids))
    con = connect(settings.paths)
    try:
        records = load_sessions(con, session_ids)
        known = known_rewards(con, session_ids)
    finally:
        con.close()
    sessions = [assemble(sid, recs) for sid, recs in records.items()]
    report.turns = sum(len(s.turns) for s in sessions)
    idle_s = settings.judge.session_idle_s
    ts = now_micros()
    known_ids = {k.reward_id for k in known}
    rows = [
        r for r in implicit_rows(sessions, plan.now, idle_s, ts) if r["reward_id"] not in known_ids
    ]
    report.implicit_rows = len(rows)
    report.implicit_kinds.update(r["signal"].removeprefix("implicit:") for r in rows)
    endpoint, _ = current_judge(settings)
    if endpoint is not None and plan.judge_version is not None:
        ready, report.judge_waiting = judge_ready(sessions, known, plan, idle_s)
        routed: dict[str, Decision] = {}
        if ready and plan.reward_model is not None:
            ready, scored, routed = triage_ready(settings, plan.reward_model, ready, ts, report)
            rows += scored
        votes = plan.judge_votes
        affordable = budget_left // votes if votes else 0  # 0 votes: the daily budget is spent
        report.judge_skipped += max(0, len(ready) - affordable)
        ready = ready[:affordable]
        if ready:
            budget = CallBudget(budget_left)
            judge = judge_at(settings, votes)
            confirm = (
                {t: d for t, d in routed.items() if d.route == "uncertain"}
                if settings.reward_model.one_vote_confirms and votes > 1
                else {}
            )
            judged = asyncio.run(
                _judge(endpoint, settings, judge, ready, budget, client, ts, report, confirm)
            )
            if plan.reward_model is not None:  # what the model said of the turns it passed on
                for row in judged:
                    row["votes"]["reward_model"] = routed[row["turn_id"]].details(
                        plan.reward_model.version
                    )
            rows += judged
    report.rewards_written = write_rewards(settings.paths, rows)
    return report


def score_summary(settings: Settings) -> tuple[Agreement, list[dict[str, Any]]]:
    """Judge–human agreement and the ledger's reward distribution, after a run."""
    con = connect(settings.paths)
    try:
        return judge_agreement(con), reward_summary(con)
    finally:
        con.close()


def score(
    settings: Settings,
    *,
    rescore: bool = False,
    max_calls: int | None = None,
    now: float | None = None,
    client: openai.AsyncOpenAI | None = None,
    batch_sessions: int = BATCH_SESSIONS,
) -> ScoreReport:
    """A whole scoring pass (what the `score` flow does, without Prefect)."""
    start = time.perf_counter()
    refreshed = refresh(settings, now=now)
    the_plan = plan(settings, rescore=rescore, now=now, batch_sessions=batch_sessions)
    budget = settings.judge.max_calls_per_run if max_calls is None else max_calls
    totals = BatchReport()
    for index, batch in enumerate(the_plan.batches):
        if the_plan.worth_loading(index, budget - totals.calls):
            totals.merge(score_batch(settings, the_plan, batch, budget - totals.calls, client))
    agreement, by_source = score_summary(settings)
    return ScoreReport(
        the_plan.judge_version,
        the_plan.implicit_version,
        the_plan.sessions,
        totals,
        budget,
        agreement,
        by_source,
        time.perf_counter() - start,
        model_summary(refreshed),
        the_plan.budget_note,
    )


def model_summary(refreshed: Refresh) -> dict[str, Any] | None:
    """The reward model part of a run's report: the model in force and whether it is new."""
    if refreshed.info is None:
        return None
    return {
        **refreshed.info.to_dict(),
        "retrained": refreshed.retrained,
        "why": refreshed.why,
        "labels_in_ledger": refreshed.labels,
    }


def status_line(settings: Settings) -> str:
    """One line for `metaclaw status`: which judge scores, and how often humans agree with it."""
    try:
        _, version = current_judge(settings)
    except ValueError as exc:
        return f"judge: [red]misconfigured[/red] ({exc})"
    con = connect(settings.paths)
    try:
        agreement = judge_agreement(con)
    finally:
        con.close()
    judge = version or "none (implicit + explicit feedback only)"
    return f"judge: {judge}; judge–human agreement: {agreement.describe()}"
