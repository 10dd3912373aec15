"""Skill tasks: thin wrappers over `metaclaw.skills.ops` adding retries and the run's log.

Retried tasks are idempotent: diagnoses and skill events have stable ids (ingest drops repeats),
efficacy statistics are recomputed whole, and a retirement of an already-retired skill is a
no-op. Committing evolved skills is *not* retried automatically — versions are immutable, so a
half-done commit is finished by the next run, which sees the diagnoses it logged as considered.
No task caches (`NO_CACHE`): each run must read the ledger and the library afresh.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from metaclaw.config import Settings
from metaclaw.ledger import append_rows
from metaclaw.skills import diagnosis as dx
from metaclaw.skills import evolution, ops
from metaclaw.skills.critic import Critic
from metaclaw.skills.store import CommitResult, SkillStore

SKILLS_WRITER_LIMIT = "metaclaw-skills-writer"  # created by flows/bootstrap.py at `metaclaw up`
WRITER_LEASE_S = 300.0


def ensure_skills_writer_limit() -> bool:
    """Create the strict global limit (1 slot) if missing, so `metaclaw run evolve` and test
    servers work without `metaclaw up`'s bootstrap; True when this call created it."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(SKILLS_WRITER_LIMIT)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=SKILLS_WRITER_LIMIT, limit=1)
            )
        except ObjectAlreadyExists:
            return False
    return True


@task(name="find-failures", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def find_failures(settings: Settings, critic_model: str, limit: int) -> list[dx.FailureGroup]:
    """Failed turns not yet diagnosed by this critic, grouped per session with trajectories."""
    return dx.find_failures(
        settings.paths,
        threshold=settings.skills.failure_threshold,
        critic_model=critic_model,
        max_turns=settings.skills.max_turns_per_diagnosis,
        limit=limit,
    )


@task(name="diagnose-groups", retries=1, retry_delay_seconds=[5], cache_policy=NO_CACHE)
def diagnose_groups(settings: Settings, groups: list[dx.FailureGroup]) -> ops.DiagnoseReport:
    """One critic call per group (retries and the call budget inside the critic client)."""
    return ops.diagnose_groups(Critic.from_settings(settings), groups)


@task(name="write-diagnoses", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def write_diagnoses(settings: Settings, rows: list[dict[str, Any]]) -> int:
    """Durable WAL append of the diagnoses (stable ids: a retry adds nothing)."""
    if rows:
        append_rows(settings.paths.wal, "diagnoses", rows)
    return len(rows)


@task(name="refresh-efficacy", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def refresh_efficacy(settings: Settings) -> dict[str, Any]:
    """Efficacy per skill version, stored for the proxy; confidently harmful skills retired."""
    store = SkillStore.open(settings)
    report, result = ops.refresh_efficacy(settings, store)
    ops.record_events(settings.paths, result)
    return {
        "turns": report.turns,
        "stats": [e.row() for e in report.stats],
        "retired": [
            {"skill": r.skill.name, "ref": r.skill.ref, "reason": r.reason} for r in report.retire
        ],
        "verdicts": [
            {"skill": v.skill.name, "ref": v.skill.ref, "event": v.event, "reason": v.reason}
            for v in report.verdicts
        ],
        "skill_set_version": store.skill_set_version,
    }


@task(name="pending-diagnoses", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def pending_clusters(
    settings: Settings, critic_model: str
) -> list[list[evolution.PendingDiagnosis]]:
    """Diagnoses this critic has not considered yet, clustered by cause."""
    return ops.pending_clusters(settings, SkillStore.open(settings), critic_model)


@task(name="propose-changes", retries=0, cache_policy=NO_CACHE)
def propose_changes(
    settings: Settings, clusters: list[list[evolution.PendingDiagnosis]]
) -> tuple[list[evolution.Proposal], int]:
    """The critic's create / revise / merge / none per cluster (and the calls it took)."""
    critic = Critic.from_settings(settings)
    return ops.propose(SkillStore.open(settings), critic, clusters), critic.calls


@task(name="commit-skills", retries=0, cache_policy=NO_CACHE)
def commit_skills(
    settings: Settings, proposals: list[evolution.Proposal], critic_model: str
) -> tuple[evolution.Outcome, CommitResult]:
    """Validate, deduplicate, intent-scan and commit the proposals as one skill-set version."""
    store = SkillStore.open(settings)
    outcome, result = ops.apply_proposals(
        settings, store, proposals, critic_model, Critic.from_settings(settings)
    )
    store.optimize()
    return outcome, result


@task(name="record-skill-events", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def record_events(settings: Settings, result: CommitResult) -> int:
    """The commit's `skill_events` into the ledger (stable ids)."""
    return ops.record_events(settings.paths, result)
