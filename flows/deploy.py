"""# Deploy: promote a candidate checkpoint only when it is measurably better

The train flow writes **candidate** checkpoints; nothing serves them until this flow says so
(docs/deploy.md). Every `flows.deploy_interval_s` (and on demand: `metaclaw run deploy`, or
`metaclaw checkpoints evaluate`) it:

1. picks the newest candidate (older unjudged ones are rejected as superseded) and the policy
   it must beat — the promoted checkpoint, or the base model when none is;
2. builds the evaluation set: recent, scored turns from the held-out split that training never
   sees (`metaclaw.deploy.split`), plus `deploy.prompts_file`;
3. samples both policies on every prompt with the same seeds, and has the judge compare each
   pair twice, swapping positions to cancel position bias;
4. runs an exact sign test on the prompts won or lost (ties reported, never half-wins) at the α
   this decision may spend — α·6/(π²k²) for the k-th decision against the current policy, so
   repeating the gate never inflates false promotions — and the guards (non-finite values, KL
   from the base, empty/looping replies, length blow-up);
5. promotes only when the test is significant and no guard trips — the running policy server
   hot-swaps at once — and otherwise rejects. The full comparison is recorded in
   `checkpoints.eval_metrics` and published as artifacts.

Before all that, every run checks that the running policy server serves the promoted checkpoint
(`GET /admin/adapter`) and re-sends the swap when it does not — a refused hot-swap would
otherwise leave users on weights the registry does not name until a restart. A mismatch is
logged and published (`policy-server-reconcile`).

Idempotent: a decided candidate is never evaluated again, and every row has a stable id. A
judge outage fails the evaluation task (retried once); the candidate waits for the next run.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from metaclaw.config import Settings
from metaclaw.deploy.curve import curve_markdown, load_curve
from metaclaw.deploy.deployer import FLOW_ACTOR, GateOutcome
from metaclaw.deploy.reconcile import Reconciliation
from tasks.deploy import (
    evaluate_candidate,
    reconcile_policy_server,
    record_decision,
    select_candidate,
)

CELL = 80


def _cell(text: str) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= CELL else text[: CELL - 1] + "…"


def _markdown(outcome: GateOutcome) -> str:
    lines = [
        "## Deploy",
        "",
        f"- candidate: **{outcome.checkpoint_id}** → **{outcome.status}**",
        f"- why: {outcome.reason}",
    ]
    if outcome.superseded:
        lines.append(f"- older candidates rejected unevaluated: {', '.join(outcome.superseded)}")
    ev = outcome.evaluation
    if ev is not None:
        w = ev.win
        lines += [
            f"- compared with: `{ev.baseline.label}` on {ev.prompts_used} prompts "
            f"(split `{ev.eval_split}`; skipped: {ev.skipped or 'none'})",
            f"- pairs: {w.n} judged — {w.wins} won both ways, {w.losses} lost both ways, "
            f"{w.ties} ties/splits, {w.missing} without a valid verdict",
            f"- sign test over prompts: {ev.test.wins} won, {ev.test.losses} lost, "
            f"{ev.test.ties} tied → p = **{ev.test.p_value:.3g}** against "
            f"α_{ev.test.k} = {ev.test.alpha_k:.3g} (decision {ev.test.k} against "
            f"`{ev.baseline.label}`, family-wise α = {ev.test.alpha:g})",
            f"- win rate {w.win_rate:.3f}, {w.confidence:.0%} Wilson interval "
            f"[{w.low:.3f}, {w.high:.3f}] (ties as half-points; descriptive)",
            f"- judge `{ev.judge_model}`: {ev.judge_calls} calls, {ev.invalid_verdicts} "
            f"unreadable verdicts; pairs decided without a call: {ev.rule_decided} by the "
            f"users' rule, {ev.model_decided} by the reward model "
            f"(`{ev.reward_model or 'off'}`)",
            "- time: " + ", ".join(f"{k} {v:.1f} s" for k, v in ev.seconds.items()),
            "",
            "| guard | tripped | value | limit | detail |",
            "|---|---|---|---|---|",
        ]
        for g in ev.guards:
            value = "" if g.value is None else f"{g.value:.4g}"
            limit = "" if g.limit is None else f"{g.limit:g}"
            lines.append(
                f"| {g.name} | {'**yes**' if g.tripped else 'no'} | {value} | "
                f"{limit} | {g.detail} |"
            )
        for note in ev.notes:
            lines.append(f"\n> {note}")
    if outcome.change is not None and outcome.change.notice is not None:
        lines.append(
            f"\n- policy server: **{outcome.change.notice.status}** — "
            f"{outcome.change.notice.detail}"
        )
    return "\n".join(lines) + "\n"


def _table(outcome: GateOutcome) -> list[dict[str, Any]]:
    assert outcome.evaluation is not None
    return [
        {
            "prompt": _cell(p.preview),
            "candidate": _cell(p.candidate.text),
            "current": _cell(p.current.text),
            "candidate as A": p.first or "-",
            "candidate as B": p.second or "-",
            "identical": p.identical,
            "score": p.score,
        }
        for p in outcome.evaluation.pairs
    ]


def _report_reconciliation(found: Reconciliation) -> None:
    from prefect import get_run_logger

    if not found.problem:
        return
    get_run_logger().warning("policy server and ledger disagreed: %s", found.detail)
    create_markdown_artifact(
        f"## Policy server reconciliation\n\n- status: **{found.status}**\n"
        f"- ledger (promoted): `{found.expected or 'base'}`\n"
        f"- server (before): `{found.served or 'base'}`\n- {found.detail}\n",
        key="policy-server-reconcile",
        description="the policy server served other weights than the ledger's promoted checkpoint",
    )


def _actor() -> str:
    from prefect.runtime import flow_run

    name = flow_run.name
    return f"{FLOW_ACTOR}:{name}" if name else FLOW_ACTOR


@flow(name="deploy")
def deploy_flow(checkpoint_id: str | None = None) -> dict[str, Any]:
    """Evaluate the newest candidate (or `checkpoint_id`) and promote or reject it."""
    settings = Settings()
    actor = _actor()
    found = reconcile_policy_server(settings)
    _report_reconciliation(found)
    reconciled = {"status": found.status, "detail": found.detail}
    prepared = select_candidate(settings, checkpoint_id, actor)
    if prepared.candidate is None:
        return {
            "status": "idle",
            "checkpoint_id": checkpoint_id,
            "reason": "; ".join(prepared.notes),
            "superseded": [],
            "reconciliation": reconciled,
        }
    assessment = evaluate_candidate(settings, prepared)
    outcome = record_decision(settings, prepared, assessment, actor)
    create_markdown_artifact(
        _markdown(outcome),
        key="deploy-report",
        description=f"deploy verdict for {outcome.checkpoint_id}",
    )
    if outcome.evaluation is not None and outcome.evaluation.pairs:
        create_table_artifact(
            _table(outcome),
            key="deploy-comparison",
            description="candidate vs current policy, pair by pair",
        )
    create_markdown_artifact(
        curve_markdown(load_curve(settings.paths)),
        key="learning-curve",
        description="users' mean reward per served policy, with the gate's verdicts",
    )
    return {**outcome.summary(), "reconciliation": reconciled}


if __name__ == "__main__":
    deploy_flow()
