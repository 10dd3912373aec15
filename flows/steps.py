"""The loop's step flows by name: the one table `pipeline`, `backfill` and the deployments share.

Why a module of its own: `pipeline` and `backfill` run the step flows, and the deployments serve
every flow including those two. With the table in `flows/deployments.py` the two modules had to
import it lazily (an import cycle); here it depends only on the step flows, so imports point
one way: steps ← pipeline/backfill ← deployments.
"""

from __future__ import annotations

from prefect import Flow

from flows.deploy import deploy_flow
from flows.diagnose import diagnose_flow
from flows.evolve import evolve_flow
from flows.ingest import ingest_flow
from flows.score import score_flow
from flows.train import train_flow

STEP_FLOWS: dict[str, Flow] = {  # in dependency order: pipeline runs them in this order
    "ingest": ingest_flow,
    "score": score_flow,
    "diagnose": diagnose_flow,
    "evolve": evolve_flow,
    "train": train_flow,
    "deploy": deploy_flow,
}
