"""The deployments `metaclaw up` serves; prefect.yaml declares the same ones for work pools.

`tests/integration/test_flows.py` checks the two agree, so a schedule is changed in one place
and the test points at the other. Besides their schedules, `score` runs when ingest lands new
turns, `train` when score writes new rewards (a train run with less than a micro-batch skips
cleanly) and `deploy` when train saves a candidate (event triggers). `pipeline` and `backfill`
run on demand.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prefect.deployments.runner import RunnerDeployment
from prefect.events import DeploymentEventTrigger

from flows.backfill import backfill_flow
from flows.ingest import TURNS_LANDED
from flows.pipeline import pipeline_flow
from flows.score import REWARDS_LANDED
from flows.steps import STEP_FLOWS
from flows.train import CANDIDATE_SAVED
from metaclaw.config import FlowSettings, Settings

FLOWS = {**STEP_FLOWS, "backfill": backfill_flow, "pipeline": pipeline_flow}


@dataclass(frozen=True)
class Spec:
    """One deployment: which flow, how often (None: on demand), what else starts it."""

    tag: str
    description: str
    interval: Callable[[FlowSettings], int] | None = None
    trigger: tuple[str, str] | None = None  # (event, resource id)
    concurrency_limit: int | None = 1


SPECS: dict[str, Spec] = {
    "ingest": Spec("ledger", "WAL segments → Parquet, compaction.", lambda f: f.ingest_interval_s),
    "score": Spec(
        "scoring",
        "Judge + implicit signals → rewards (explicit feedback read live).",
        lambda f: f.score_interval_s,
        (TURNS_LANDED, "metaclaw.ledger.turns"),
    ),
    "backfill": Spec(
        "backfill", "Historical logs → ledger → score, diagnose, evolve (train). On demand."
    ),
    "train": Spec(
        "training",
        "Rewarded turns → LoRA micro-batch → candidate checkpoint.",
        lambda f: f.train_interval_s,
        (REWARDS_LANDED, "metaclaw.ledger.rewards"),
    ),
    "diagnose": Spec(
        "skills",
        "Failed turns → whole trajectory → root cause (critic LLM) → diagnoses.",
        lambda f: f.diagnose_interval_s,
    ),
    "evolve": Spec(
        "skills",
        "Efficacy + retirement; diagnoses → new / revised / merged skills.",
        lambda f: f.evolve_interval_s,
    ),
    "deploy": Spec(
        "deploy",
        "Candidate vs current on held-out prompts → promote or reject; hot-swap.",
        lambda f: f.deploy_interval_s,
        (CANDIDATE_SAVED, "metaclaw.ledger.checkpoints"),
    ),
    "pipeline": Spec(
        "pipeline",
        "The whole loop once: ingest → score → diagnose → evolve → train → deploy. On demand.",
        concurrency_limit=None,
    ),
}


def build_deployments(settings: Settings) -> list[RunnerDeployment]:
    flows = settings.flows
    return [
        FLOWS[name].to_deployment(
            name=name,
            interval=spec.interval(flows) if spec.interval else None,
            concurrency_limit=spec.concurrency_limit,
            tags=["metaclaw", spec.tag],
            description=spec.description,
            # MetaClawConfig(enable_skill_evolution=False) pauses evolution's schedule
            paused=name == "evolve" and not flows.evolve_enabled,
            triggers=[
                DeploymentEventTrigger(
                    expect={spec.trigger[0]}, match={"prefect.resource.id": spec.trigger[1]}
                )
            ]
            if spec.trigger
            else None,
        )
        for name, spec in SPECS.items()
    ]
