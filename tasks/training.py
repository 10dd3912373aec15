"""Training tasks: the LoRA step (metaclaw.training) and the global training slot."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import task
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from metaclaw.config import Settings
from metaclaw.ledger import query
from metaclaw.runtime_priority import background_priority

TRAINING_LIMIT = "metaclaw-training"


@task(name="ensure-training-limit", retries=2, retry_delay_seconds=[1, 5])
def ensure_training_limit() -> bool:
    """Create the strict global limit (1 slot) if missing; True when this call created it.

    `metaclaw up` creates it at start-up (flows/bootstrap.py); creating it here as well keeps
    `metaclaw run train` and test servers working, and a concurrent creator is harmless.
    """
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(TRAINING_LIMIT)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=TRAINING_LIMIT, limit=1)
            )
        except ObjectAlreadyExists:
            return False
    return True


@task(name="train-steps", retries=1, retry_delay_seconds=[10])
def train_steps(settings: Settings, max_steps: int | None = None) -> list[dict[str, Any]]:
    """Run up to `max_steps` LoRA steps. Safe to retry: a step interrupted before its rows were
    written left its turns unconsumed and resumes from the last saved state."""
    from metaclaw.training.trainer import Trainer  # torch/tinker load only when training runs

    with background_priority(settings.training):  # users first: the policy server wins the CPU
        trainer = Trainer(settings)
        try:
            return [asdict(outcome) for outcome in trainer.run(max_steps)]
        finally:
            trainer.close()


@task(name="train-history")
def train_history(settings: Settings) -> list[dict[str, Any]]:
    """Every step so far (for the reward/loss curve artifact)."""
    columns, rows = query(
        settings.paths,
        """
        SELECT step, metrics->>'status' AS status, CAST(metrics->>'loss' AS DOUBLE) AS loss,
               CAST(metrics->>'reward_mean' AS DOUBLE) AS reward_mean,
               CAST(metrics->>'kl' AS DOUBLE) AS kl, CAST(metrics->>'tokens' AS BIGINT) AS tokens,
               CAST(metrics->>'n_samples' AS BIGINT) AS n_samples,
               metrics->>'checkpoint_id' AS checkpoint_id, ts
        FROM train_steps ORDER BY step""",
    )
    return [dict(zip(columns, row, strict=True)) for row in rows]
