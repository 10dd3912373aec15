"""The deployments `metaclaw up` serves; prefect.yaml declares the same ones for work pools.

`tests/integration/test_flows.py` checks the two agree, so a schedule is changed in one place
and the test points at the other. Besides their schedules, `score` runs when ingest lands new
turns and `train` when score writes new rewards (event triggers; a train run with less than a
micro-batch skips cleanly). `pipeline` and `backfill` run on demand.
"""

from __future__ import annotations

from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from flows.backfill import backfill_flow
from flows.deploy import deploy_flow
from flows.diagnose import diagnose_flow
from flows.evolve import evolve_flow
from flows.ingest import TURNS_LANDED, ingest_flow
from flows.pipeline import pipeline_flow
from flows.score import REWARDS_LANDED, score_flow
from flows.train import train_flow
from metaclaw.config import Settings


def on_event(event: str, resource_id: str) -> DeploymentEventTrigger:
    return DeploymentEventTrigger(expect={event}, match={"prefect.resource.id": resource_id})


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    return [
        ingest_flow.to_deployment(
            name="ingest",
            interval=settings.flows.ingest_interval_s,
            concurrency_limit=1,
            tags=["metaclaw", "ledger"],
            description="WAL segments → Parquet, compaction.",
            paused=False,
        ),
        score_flow.to_deployment(
            name="score",
            interval=settings.flows.score_interval_s,
            concurrency_limit=1,
            tags=["metaclaw", "scoring"],
            description="Judge + implicit signals → rewards (explicit feedback read live).",
            paused=False,
            triggers=[on_event(TURNS_LANDED, "metaclaw.ledger.turns")],
        ),
        backfill_flow.to_deployment(
            name="backfill",
            concurrency_limit=1,
            tags=["metaclaw", "backfill"],
            description="Historical logs → ledger → score, diagnose, evolve (train). On demand.",
            paused=False,
        ),
        train_flow.to_deployment(
            name="train",
            interval=settings.flows.train_interval_s,
            concurrency_limit=1,
            tags=["metaclaw", "training"],
            description="Rewarded turns → LoRA micro-batch → candidate checkpoint.",
            paused=False,
            triggers=[on_event(REWARDS_LANDED, "metaclaw.ledger.rewards")],
        ),
        diagnose_flow.to_deployment(
            name="diagnose",
            interval=settings.flows.diagnose_interval_s,
            concurrency_limit=1,
            tags=["metaclaw", "skills"],
            description="Failed turns → whole trajectory → root cause (critic LLM) → diagnoses.",
            paused=False,
        ),
        evolve_flow.to_deployment(
            name="evolve",
            interval=settings.flows.evolve_interval_s,
            concurrency_limit=1,
            tags=["metaclaw", "skills"],
            description="Efficacy + retirement; diagnoses → new / revised / merged skills.",
            paused=not settings.flows.evolve_enabled,  # MetaClawConfig(enable_skill_evolution=)
        ),
        deploy_flow.to_deployment(
            name="deploy",
            interval=settings.flows.deploy_interval_s,
            concurrency_limit=1,
            tags=["metaclaw", "deploy"],
            description="Candidate vs current on held-out prompts → promote or reject; hot-swap.",
            paused=False,
        ),
        pipeline_flow.to_deployment(
            name="pipeline",
            tags=["metaclaw", "pipeline"],
            description="The whole loop once: ingest → score → diagnose → evolve → train → "
            "deploy. On demand.",
            paused=False,
        ),
    ]


FLOWS = {
    "ingest": ingest_flow,
    "score": score_flow,
    "diagnose": diagnose_flow,
    "evolve": evolve_flow,
    "train": train_flow,
    "deploy": deploy_flow,
    "backfill": backfill_flow,
    "pipeline": pipeline_flow,
}
