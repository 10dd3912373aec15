"""# Train: rewarded turns → a LoRA micro-batch → a candidate checkpoint

Every `flows.train_interval_s` this flow looks for turns no earlier step has trained on and
that have a reward (`turn_rewards`). Policy-served turns, which carry the exact tokens and the
sampler's logprobs, feed the configured RL loss (importance_sampling / ppo / cispo, or on-policy
distillation against a teacher); upstream-served and backfilled turns feed cross-entropy when
their reward is high enough, never an importance-sampling loss. When at least one micro-batch
(`training.batch_size` sequences) is ready it runs forward_backward + optim_step on the
configured backend (local transformers+peft, or Tinker), saves a checkpoint, and records a
`train_steps` row and a **candidate** `checkpoints` row. It never promotes: the deploy flow
gates that, started at once by the `metaclaw.checkpoint.candidate` event this flow emits.

Only one training run exists at a time: the deployment's concurrency limit covers scheduled
runs, and the strict global limit `metaclaw-training` also covers hand-started runs
(`metaclaw run train`, the backfill flow). A non-finite loss or a diverging sampler/learner KL
fails the step before the update; a crash mid-step resumes from the last good state.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.concurrency.sync import concurrency
from prefect.events import emit_event

from metaclaw.config import Settings
from metaclaw.training.report import run_markdown
from tasks.training import TRAINING_LIMIT, ensure_training_limit, train_history, train_steps

# the deploy deployment is triggered by this event: a candidate is gated as soon as it exists,
# not at the next deploy interval (freshness: feedback → a promoted policy serving users)
CANDIDATE_SAVED = "metaclaw.checkpoint.candidate"


@flow(name="train", retries=1, retry_delay_seconds=30)
def train_flow(max_steps: int | None = None) -> dict[str, Any]:
    """Train on new rewarded turns (up to `max_steps`, default training.max_steps_per_run)."""
    settings = Settings()
    ensure_training_limit()
    with concurrency(
        TRAINING_LIMIT, occupy=1, strict=True, lease_duration=settings.training.concurrency_lease_s
    ):
        outcomes = train_steps(settings, max_steps)
    history = train_history(settings)
    if any(o["status"] != "idle" for o in outcomes):
        create_markdown_artifact(
            run_markdown(outcomes, history),
            key="train-report",
            description="LoRA steps and the reward/loss curve",
        )
        create_table_artifact(
            [
                {k: h[k] for k in ("step", "status", "loss", "reward_mean", "kl", "tokens")}
                for h in history
            ],
            key="train-curve",
            description="reward and loss per training step",
        )
    candidates = [o["checkpoint_id"] for o in outcomes if o["checkpoint_id"]]
    if candidates:
        emit_event(
            event=CANDIDATE_SAVED,
            resource={"prefect.resource.id": "metaclaw.ledger.checkpoints"},
            payload={"checkpoints": candidates},
        )
    return {
        "steps": [o["step"] for o in outcomes if o["status"] == "trained"],
        "failed": [o["step"] for o in outcomes if o["status"] == "failed"],
        "stalled": [o["reason"] for o in outcomes if o["status"] == "stalled"],
        "checkpoints": candidates,
        "outcomes": [
            {
                k: o[k]
                for k in (
                    "status",
                    "reason",
                    "step",
                    "checkpoint_id",
                    "path",
                    "skipped",
                    "candidates",
                )
            }
            for o in outcomes
        ],
    }


if __name__ == "__main__":
    train_flow()
