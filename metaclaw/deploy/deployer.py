"""Registry actions with their side effects: promote, reject, roll back, and the gate run.

Each change is: lock → read the ledger → check servability → plan rows (the transition table
decides) → one durable append → unlock → tell the policy server (outside the lock; its answer
never undoes a recorded change). The gate (`prepare` → `assess` → `record`) is split in three
so the flow can run each as a task; `run_gate` chains them for the CLI, tests and benchmarks.
"""

from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaclaw.config import Settings
from metaclaw.deploy.durable import (
    NotServableError,
    check_servable,
    is_tinker,
    pin_tinker_checkpoint,
)
from metaclaw.deploy.evalset import EvalSet, build_eval_set
from metaclaw.deploy.evaluate import CandidateBrokenError, Evaluation, Progress, evaluate
from metaclaw.deploy.notify import SwapNotice, notify_policy_server
from metaclaw.deploy.pairwise import PairDecider, PairwiseJudge
from metaclaw.deploy.registry import (
    CANDIDATE,
    REJECTED,
    ROLLED_BACK,
    Book,
    Checkpoint,
    plan_promote,
    plan_reject,
    plan_rollback,
)
from metaclaw.deploy.replycache import ReplyCache
from metaclaw.deploy.reward_pairs import pair_decider
from metaclaw.deploy.sampling import BASE, PolicyRef, Sampler, make_sampler
from metaclaw.deploy.stated_rules import users_rule
from metaclaw.deploy.store import append, read_book, registry_lock
from metaclaw.ledger.records import now_micros
from metaclaw.scoring.hint_rules import HintRule

FLOW_ACTOR = "deploy-flow"


def cli_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


@dataclass
class Change:
    """What one registry change did."""

    action: str  # promoted | rejected | rolled_back | unchanged
    checkpoint_id: str | None
    message: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    restored: str | None = None
    notice: SwapNotice | None = None


def _notify(
    settings: Settings, checkpoint_id: str | None, path: str | None, enabled: bool
) -> SwapNotice | None:
    return notify_policy_server(settings, checkpoint_id, path) if enabled else None


def promote(
    settings: Settings,
    checkpoint_id: str,
    *,
    actor: str,
    reason: str,
    force: bool = False,
    action: str | None = None,
    eval_metrics: Any = None,
    notify: bool = True,
) -> Change:
    """Promote a checkpoint (supersedes the promoted one). `force` overrides a rejection or
    rollback; nothing overrides a non-durable path or non-finite weights."""
    paths = settings.paths
    with registry_lock(paths):
        book = read_book(paths)
        ckpt = book.get(checkpoint_id)
        path = check_servable(ckpt.path, settings.home, checkpoint_id)
        act = action or (
            "override" if force and ckpt.status in (REJECTED, ROLLED_BACK) else "manual"
        )
        previous = book.promoted
        rows = plan_promote(
            book,
            checkpoint_id,
            action=act,
            actor=actor,
            reason=reason,
            now=now_micros(),
            eval_metrics=eval_metrics,
        )
        append(paths, rows)
    if not rows:
        return Change("unchanged", checkpoint_id, f"{checkpoint_id} is already promoted")
    before = previous.checkpoint_id if previous else "the base model"
    return Change(
        "promoted",
        checkpoint_id,
        f"promoted {checkpoint_id} (replacing {before})",
        rows,
        notice=_notify(settings, checkpoint_id, path, notify),
    )


def reject(
    settings: Settings,
    checkpoint_id: str,
    *,
    actor: str,
    reason: str,
    action: str = "manual",
    eval_metrics: Any = None,
) -> Change:
    paths = settings.paths
    with registry_lock(paths):
        book = read_book(paths)
        rows = plan_reject(
            book,
            checkpoint_id,
            action=action,
            actor=actor,
            reason=reason,
            now=now_micros(),
            eval_metrics=eval_metrics,
        )
        append(paths, rows)
    return Change("rejected", checkpoint_id, f"rejected {checkpoint_id}: {reason}", rows)


def rollback(
    settings: Settings, *, actor: str, reason: str = "rollback", notify: bool = True
) -> Change:
    """Roll back the promoted checkpoint; the previous promoted one (or the base) is served."""
    paths = settings.paths
    with registry_lock(paths):
        book = read_book(paths)
        previous = book.previous
        path = None
        if previous is not None:
            try:
                path = check_servable(previous.path, settings.home, previous.checkpoint_id)
            except NotServableError as exc:
                raise NotServableError(
                    f"cannot restore {previous.checkpoint_id}: {exc}; promote a specific "
                    "checkpoint instead (`metaclaw checkpoints promote ID`)"
                ) from None
        plan = plan_rollback(book, actor=actor, reason=reason, now=now_micros())
        append(paths, plan.rows)
    served = plan.restored or "the base model"
    return Change(
        "rolled_back",
        plan.rolled_back,
        f"rolled back {plan.rolled_back}; now serving {served}",
        plan.rows,
        restored=plan.restored,
        notice=_notify(settings, plan.restored, path, notify),
    )


# ----- the gate ---------------------------------------------------------------------------


@dataclass
class Prepared:
    """The candidate to judge, what it is judged against, and on which prompts."""

    candidate: Checkpoint | None
    baseline: PolicyRef = BASE
    eval_set: EvalSet | None = None
    superseded: list[str] = field(default_factory=list)  # older candidates rejected unjudged
    notes: list[str] = field(default_factory=list)
    promoted_id: str | None = None  # what was promoted when the comparison was set up
    prior_decisions: dict[str, int] = field(default_factory=dict)  # per current policy
    stated_rule: HintRule | None = None  # decides pairs first (`deploy.stated_rules`)
    decider: PairDecider | None = None  # the reward model, next (`deploy.reward_model_pairs`)


@dataclass
class Assessment:
    promote: bool | None  # None: no verdict yet (the candidate waits)
    reason: str
    evaluation: Evaluation | None = None

    def eval_metrics(self) -> dict[str, Any] | None:
        if self.evaluation is not None:
            return self.evaluation.metrics()
        return {
            "decision": "wait"
            if self.promote is None
            else ("promote" if self.promote else "reject"),
            "reason": self.reason,
        }


@dataclass
class GateOutcome:
    status: str  # promoted | rejected | waiting | idle | skipped
    checkpoint_id: str | None
    reason: str
    superseded: list[str] = field(default_factory=list)
    evaluation: Evaluation | None = None
    change: Change | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "status": self.status,
            "checkpoint_id": self.checkpoint_id,
            "reason": self.reason,
            "superseded": self.superseded,
        }
        if self.evaluation is not None:
            ev = self.evaluation
            out.update(
                baseline=ev.baseline.label,
                win_rate=ev.win.win_rate,
                low=ev.win.low,
                high=ev.win.high,
                pairs=ev.win.n,
                wins=ev.test.wins,
                losses=ev.test.losses,
                ties=ev.test.ties,
                p_value=ev.test.p_value,
                alpha_k=ev.test.alpha_k,
                k=ev.test.k,
                guards_tripped=[g.name for g in ev.guards if g.tripped],
            )
        if self.change is not None and self.change.notice is not None:
            out["policy_server"] = self.change.notice.status
        return out


def baseline_of(settings: Settings, book: Book) -> tuple[PolicyRef, list[str]]:
    """The current policy to beat: the promoted checkpoint, else the base model."""
    promoted = book.promoted
    if promoted is None:
        return BASE, ["no checkpoint is promoted: the candidate is compared with the base model"]
    try:
        path = check_servable(promoted.path, settings.home, promoted.checkpoint_id)
    except NotServableError as exc:
        return BASE, [
            f"the promoted checkpoint cannot be loaded ({exc}): compared with the "
            "base model instead"
        ]
    return PolicyRef(promoted.checkpoint_id, path), []


def prepare(
    settings: Settings, checkpoint_id: str | None = None, *, actor: str = FLOW_ACTOR
) -> Prepared:
    """Pick the candidate (the newest, or the one named) and reject older unjudged ones."""
    paths = settings.paths
    with registry_lock(paths):
        book = read_book(paths)
        if checkpoint_id is not None:
            target = book.get(checkpoint_id)
            if target.status != CANDIDATE:
                return Prepared(
                    None,
                    notes=[
                        f"{checkpoint_id} is {target.status}, not a candidate: nothing to evaluate"
                    ],
                )
            stale: list[Checkpoint] = []
        else:
            found = book.candidates()
            if not found:
                return Prepared(None, notes=["no candidate checkpoints"])
            target, stale = found[0], found[1:]
        rows: list[dict[str, Any]] = []
        for old in stale:
            rows += plan_reject(
                book,
                old.checkpoint_id,
                action="gate",
                actor=actor,
                reason=f"superseded before evaluation by the newer candidate "
                f"{target.checkpoint_id}",
                now=now_micros(),
            )
        append(paths, rows)
    baseline, notes = baseline_of(settings, book)
    return Prepared(
        target,
        baseline,
        build_eval_set(settings),
        [c.checkpoint_id for c in stale],
        notes,
        book.promoted.checkpoint_id if book.promoted else None,
        book.decisions_against(),
        users_rule(settings),
        pair_decider(settings),
    )


def reply_cache_root(settings: Settings) -> Path:
    return settings.home / "deploy" / "replies"


def assess(
    settings: Settings,
    prepared: Prepared,
    *,
    sampler: Sampler | None = None,
    judge: PairwiseJudge | None = None,
    rest_client: Any = None,
    progress: Progress | None = None,
) -> Assessment:
    """Evaluate the prepared candidate (no ledger writes)."""
    cfg = settings.deploy
    ckpt = prepared.candidate
    assert ckpt is not None, "nothing prepared"
    try:
        path = check_servable(ckpt.path, settings.home, ckpt.checkpoint_id)
    except NotServableError as exc:
        return Assessment(False, f"not servable: {exc}")
    judge = judge or PairwiseJudge.from_settings(settings)
    if judge is None:
        return Assessment(
            None,
            "no judge configured: set METACLAW_JUDGE__BASE_URL and "
            "METACLAW_JUDGE__MODEL (any OpenAI-compatible model)",
        )
    if judge.rule is None:
        judge.rule = prepared.stated_rule
    if judge.decider is None:
        judge.decider = prepared.decider
    eval_set = prepared.eval_set or build_eval_set(settings)
    if len(eval_set.prompts) < cfg.min_eval_prompts:
        return Assessment(
            None,
            f"only {len(eval_set.prompts)} eval prompts (need "
            f"deploy.min_eval_prompts={cfg.min_eval_prompts}): held-out turns "
            f"({cfg.eval_fraction:.0%} of scored traffic) or deploy.prompts_file",
        )
    if is_tinker(path):
        if rest_client is None:
            import tinker

            tc = settings.training
            key = tc.tinker_api_key.get_secret_value() if tc.tinker_api_key else None
            rest_client = tinker.ServiceClient(
                base_url=tc.tinker_base_url, api_key=key
            ).create_rest_client()
        pin_tinker_checkpoint(path, rest_client, settings.training.tinker_timeout_s)
    own_sampler = sampler is None
    sampler = sampler or make_sampler(settings)
    try:
        root, model = reply_cache_root(settings), settings.training.base_model
        evaluation = evaluate(
            cfg,
            sampler,
            judge,
            PolicyRef(ckpt.checkpoint_id, path),
            prepared.baseline,
            eval_set,
            train_metrics=ckpt.train_metrics,
            prior_decisions=prepared.prior_decisions,
            cache_for=lambda policy: ReplyCache(root, policy, model),
            progress=progress,
        )
    except CandidateBrokenError as exc:
        return Assessment(False, str(exc))
    finally:
        if own_sampler:
            sampler.close()
    evaluation.notes += prepared.notes
    if evaluation.prompts_used < cfg.min_eval_prompts:
        return Assessment(
            None,
            f"only {evaluation.prompts_used} eval prompts could be rendered "
            f"(need {cfg.min_eval_prompts}; skipped: {evaluation.skipped})",
            evaluation,
        )
    judged = sum(1 for p in evaluation.pairs if not p.identical)
    if judged and evaluation.win.missing * 2 > judged:
        return Assessment(
            None,
            f"the judge gave no readable verdict for {evaluation.win.missing}"
            f" of {judged} pairs (model {evaluation.judge_model}); fix the judge "
            "(judge.model / judge.base_url) — the candidate waits",
            evaluation,
        )
    return Assessment(evaluation.decision.promote, evaluation.decision.reason, evaluation)


def record(
    settings: Settings,
    prepared: Prepared,
    assessment: Assessment,
    *,
    actor: str = FLOW_ACTOR,
    notify: bool = True,
) -> GateOutcome:
    """Write the verdict (promote or reject) unless the world moved on meanwhile."""
    ckpt = prepared.candidate
    assert ckpt is not None, "nothing prepared"
    cid = ckpt.checkpoint_id
    base = GateOutcome(
        "waiting", cid, assessment.reason, prepared.superseded, assessment.evaluation
    )
    if assessment.promote is None:
        return base
    book = read_book(settings.paths)
    now_status = book.get(cid).status
    if now_status != CANDIDATE:
        base.status, base.reason = "skipped", f"{cid} became {now_status} during evaluation"
        return base
    current = book.promoted.checkpoint_id if book.promoted else None
    if assessment.evaluation is not None and current != prepared.promoted_id:
        base.status = "skipped"
        base.reason = (
            f"the promoted checkpoint changed during evaluation ({current}); "
            "the candidate is evaluated again next run"
        )
        return base
    metrics = assessment.eval_metrics()
    if assessment.promote:
        base.change = promote(
            settings,
            cid,
            actor=actor,
            reason=assessment.reason,
            action="gate",
            eval_metrics=metrics,
            notify=notify,
        )
        base.status = "promoted"
    else:
        base.change = reject(
            settings,
            cid,
            actor=actor,
            reason=assessment.reason,
            action="gate",
            eval_metrics=metrics,
        )
        base.status = "rejected"
    return base


def run_gate(
    settings: Settings,
    checkpoint_id: str | None = None,
    *,
    actor: str = FLOW_ACTOR,
    sampler: Sampler | None = None,
    judge: PairwiseJudge | None = None,
    rest_client: Any = None,
    progress: Progress | None = None,
    notify: bool = True,
) -> GateOutcome:
    prepared = prepare(settings, checkpoint_id, actor=actor)
    if prepared.candidate is None:
        return GateOutcome("idle", checkpoint_id, "; ".join(prepared.notes))
    assessment = assess(
        settings, prepared, sampler=sampler, judge=judge, rest_client=rest_client, progress=progress
    )
    return record(settings, prepared, assessment, actor=actor, notify=notify)
