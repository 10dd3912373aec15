"""# Score: every turn gets a reward it can be trusted for, with its provenance

The proxy lands turns; this flow gives them rewards (docs/scoring.md). It finds the sessions with
turns not yet scored by the current scorer versions, and for each batch of sessions:

1. places every turn in its conversation, so each reply is paired with what happened next — the
   user's next message or the tool results;
2. writes the **implicit** signals whose evidence is final (correction, re-ask, continuation,
   tool/upstream error, abandonment, session length);
3. asks the **judge** (when one is configured) for m votes on each turn that is ready — it has a
   next state, or its session has been idle long enough — within the run's call budget; once
   the **reward model** exists (retrained here first when enough new labels landed), it scores
   the turns it is confident about and the judge gets the rest plus an audit share.

Explicit feedback needs no step: `turn_rewards` reads the `feedback` table directly and ranks it
first. Re-running writes nothing new (stable reward ids); turns whose judge calls failed stay
pending and are retried next run. `rescore=True` re-judges history scored by an older judge
version. Each run publishes a markdown report, a table of the reward distribution and a chart of
the daily cost. Near `costs.daily_budget_usd` the judge casts one vote per turn, and at it none
(the reward model and explicit feedback still score); the report says so.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.events import emit_event

from flows.runners import ConfiguredTaskRunner, budget_shares
from metaclaw.config import Settings
from metaclaw.scoring.reward_store import ModelInfo
from metaclaw.scoring.scorer import BatchReport, ScoreReport, model_summary
from tasks.scoring import (
    daily_cost,
    plan_scoring,
    refresh_reward_model,
    score_session_batch,
    summarise_rewards,
)


def _report_markdown(report: ScoreReport) -> str:
    t = report.totals
    judged = t.judged
    inter = (
        f"{t.agreement_sum / judged:.0%} mean, {t.unanimous}/{judged} unanimous, {t.ties} ties"
        if judged
        else "-"
    )
    human = report.agreement.describe() if report.agreement else "-"
    values = ", ".join(f"{k}: {v}" for k, v in sorted(t.judge_values.items())) or "-"
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(t.implicit_kinds.items())) or "-"
    judge = f"`{report.judge}`" if report.judge else "none configured (implicit + explicit only)"
    lines = [
        "## Score",
        "",
        f"- judge: {judge}; implicit: `{report.implicit_version}`",
        f"- sessions scanned: **{t.sessions}** ({t.turns} turns); reward rows written: "
        f"**{t.rewards_written}**",
        f"- turns judged: **{judged}** (votes {values}); failed, retried next run: "
        f"{t.judge_failed}; waiting for a next state: {t.judge_waiting}; over budget: "
        f"{t.judge_skipped}",
        f"- implicit signals: **{t.implicit_rows}** ({kinds})",
        f"- reward model: **{t.model_scored}** turns scored without the judge; to the judge: "
        f"{t.model_uncertain} uncertain ({t.model_confirmed} settled by one vote agreeing "
        f"with the model), {t.model_audited} audited",
        f"- judge agreement between votes: {inter}",
        f"- judge–human agreement: {human}",
        f"- cost: **{t.calls}** judge calls of a budget of {report.budget} ({t.retries} retries, "
        f"{t.failed_calls} failed calls, {t.invalid_votes} unreadable votes), "
        f"{t.judge_seconds:.1f} s judging",
    ]
    if report.budget_note:
        lines.append(f"- {report.budget_note}")
    if t.errors:
        lines += ["", "### Judge errors (first few)", ""] + [f"- {e}" for e in t.errors]
    return "\n".join(lines) + "\n"


def _model_markdown(info: ModelInfo, retrained: bool, why: str) -> str:
    """The reward model's held-out figures and calibration curve (artifact `reward-model`)."""
    h = info.holdout
    state = f"retrained this run: {why}" if retrained else "unchanged this run"
    lines = [
        "## Reward model",
        "",
        f"- version: `{info.version}` ({state}); trained on {info.train_turns} labels "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(info.sources.items()))}) in "
        f"{info.seconds:.1f} s",
    ]
    if h is None:
        return "\n".join([*lines, "- no held-out labels yet", ""])

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines += [
        f"- held out: {h.turns} labels; AUC {f(h.auc)}, accuracy {f(h.accuracy)}; vs humans "
        f"{f(h.human_accuracy)} ({h.human_turns}), vs the judge {f(h.judge_accuracy)} "
        f"({h.judge_turns}); expected calibration error {f(h.ece)}",
        f"- at the triage confidence: {f(h.coverage)} of turns, {f(h.confident_accuracy)} right",
        "",
        "| predicted P(good) | turns | mean predicted | observed good |",
        "|---|---|---|---|",
        *(
            f"| {b.low:.1f}–{b.high:.1f} | {b.turns} | {b.mean_p:.3f} | {b.observed:.3f} |"
            for b in h.bins
        ),
    ]
    return "\n".join(lines) + "\n"


REWARDS_LANDED = "metaclaw.rewards.landed"


@flow(name="score", task_runner=ConfiguredTaskRunner())
def score_flow(rescore: bool = False, max_calls: int | None = None) -> dict[str, Any]:
    """Score unscored turns (judge + implicit signals); publishes a report artifact."""
    settings = Settings()
    refreshed = refresh_reward_model(settings)
    plan = plan_scoring(settings, rescore)
    budget = settings.judge.max_calls_per_run if max_calls is None else max_calls
    totals = BatchReport()
    # Batches fan out on the configured task runner (flows/runners.py), the budget split evenly.
    futures = [
        score_session_batch.submit(settings, plan, index, share)
        for index, share in enumerate(budget_shares(budget, len(plan.batches)))
        if plan.worth_loading(index, share)
    ]
    for future in futures:
        totals.merge(future.result())
    agreement, by_source = summarise_rewards(settings)
    report = ScoreReport(
        plan.judge_version,
        plan.implicit_version,
        plan.sessions,
        totals,
        budget,
        agreement,
        by_source,
        reward_model=model_summary(refreshed),
        budget_note=plan.budget_note,
    )
    if refreshed.info is not None:
        create_markdown_artifact(
            _model_markdown(refreshed.info, refreshed.retrained, refreshed.why),
            key="reward-model",
            description="Reward model: held-out accuracy, AUC and calibration",
        )
    create_markdown_artifact(
        _report_markdown(report),
        key="score-report",
        description="Rewards written, judge agreement and cost",
    )
    create_markdown_artifact(
        daily_cost(settings),
        key="daily-cost",
        description="USD per day: judge, critic and users' calls, and the daily budget",
    )
    if by_source:
        create_table_artifact(
            by_source, key="score-rewards", description="turn_rewards by source (whole ledger)"
        )
    if totals.rewards_written:  # the train deployment is triggered by this event
        emit_event(
            event=REWARDS_LANDED,
            resource={"prefect.resource.id": "metaclaw.ledger.rewards"},
            payload={"rewards": totals.rewards_written},
        )
    return report.to_dict()


if __name__ == "__main__":
    score_flow()
