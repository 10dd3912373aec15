"""The deployments `metaclaw up` serves; prefect.yaml declares the same ones for work pools.

`tests/integration/test_deployments.py` checks the two agree, so a schedule is changed in one
place and the test points at the other.
"""

from __future__ import annotations

from prefect.deployments.runner import RunnerDeployment

from flows.ingest import ingest_flow
from metaclaw.config import Settings


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
    ]


FLOWS = {"ingest": ingest_flow}
