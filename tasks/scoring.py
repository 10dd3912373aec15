"""Scoring tasks: thin wrappers over `metaclaw.scoring.scorer` adding retries and the run's log.

Each task is safe to retry: reward ids are stable and ids already in the ledger are dropped
before writing, so a retried batch writes only what the failed attempt did not. Inputs are not
hashed for caching (`NO_CACHE`): a scoring pass must always look at the ledger afresh.
"""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from metaclaw.config import Settings
from metaclaw.costs.overview import cost_chart
from metaclaw.scoring.adaptive import Refresh, refresh
from metaclaw.scoring.scorer import BatchReport, ScorePlan, plan, score_batch, score_summary
from metaclaw.scoring.store import Agreement


@task(name="refresh-reward-model", retries=1, retry_delay_seconds=[5], cache_policy=NO_CACHE)
def refresh_reward_model(settings: Settings) -> Refresh:
    """Retrain the reward model when enough new labels landed (or on its schedule)."""
    return refresh(settings)


@task(name="plan-scoring", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def plan_scoring(settings: Settings, rescore: bool) -> ScorePlan:
    """Which sessions have turns not yet scored by the current scorer versions."""
    return plan(settings, rescore=rescore)


@task(
    name="score-batch",
    retries=1,
    retry_delay_seconds=[5],
    cache_policy=NO_CACHE,
    task_run_name="score-batch-{index}",
)
def score_session_batch(
    settings: Settings, the_plan: ScorePlan, index: int, budget_left: int
) -> BatchReport:
    """Implicit signals + judge votes for one batch of sessions; writes the new reward rows."""
    return score_batch(settings, the_plan, the_plan.batches[index], budget_left)


@task(name="score-summary", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def summarise_rewards(settings: Settings) -> tuple[Agreement, list[dict[str, Any]]]:
    """Judge–human agreement and the reward distribution, read back from the ledger."""
    return score_summary(settings)


@task(name="daily-cost", retries=2, retry_delay_seconds=[1, 5], cache_policy=NO_CACHE)
def daily_cost(settings: Settings) -> str:
    """The last days' spend per role as markdown, read back from the ledger."""
    return cost_chart(settings)
