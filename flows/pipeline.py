"""# Pipeline: the whole loop, once, in dependency order

ingest → score → diagnose → evolve → train → deploy, each as a subflow so every step keeps its
own run, logs and artifacts in the UI. Every step skips cleanly when it has nothing to do (no
new turns, no failures, no critic configured, not a full micro-batch, no candidate), so this
flow is safe to run at any time: on demand, after a backfill, or from the demo. A one-page
summary artifact shows what each step did.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.steps import STEP_FLOWS


def _headline(result: Any) -> str:
    """The first few scalar figures a step returned, for the summary table."""
    if not isinstance(result, dict):
        return str(result)[:120]
    figures = [f"{k}={v}" for k, v in result.items() if isinstance(v, int | float | str | bool)]
    return ", ".join(figures[:6]) or "-"


def summary_markdown(results: dict[str, Any]) -> str:
    rows = "\n".join(f"| {name} | {_headline(result)} |" for name, result in results.items())
    return f"## Pipeline\n\n| step | outcome |\n|---|---|\n{rows}\n"


@flow(name="pipeline")
def pipeline_flow(train: bool = True, deploy: bool = True) -> dict[str, Any]:
    """Run every step once; `train`/`deploy` false stops after skills."""
    skip = set() if train else {"train", "deploy"}
    if not deploy:
        skip.add("deploy")
    results: dict[str, Any] = {}
    for name, step in STEP_FLOWS.items():  # in dependency order
        results[name] = "skipped" if name in skip else step()
    create_markdown_artifact(
        summary_markdown(results),
        key="pipeline-summary",
        description="What each step of the loop did",
    )
    return results
