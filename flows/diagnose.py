"""# Diagnose: why did the assistant fail?

The score flow gives every turn a reward. This flow takes the turns that failed (reward below
`skills.failure_threshold`) and have not been diagnosed by the configured critic and prompt
version yet, and for each session:

1. rebuilds the whole trajectory from the ledger — every earlier turn, the tool calls and their
   results, and what happened after the failure (the user's reaction or the tool results);
2. asks the critic LLM for the root cause as JSON (category, explanation, evidence quotes); an
   answer that is not valid JSON of that shape is retried, then rejected — never stored;
3. writes the diagnoses to the ledger (`diagnoses`, id = hash of turn ids + critic + prompt
   version, so re-running writes nothing new).

With no critic configured the run skips and says what to set. The `evolve` flow turns diagnoses
into skills. Each run publishes a markdown summary and a table of the diagnoses.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.runners import ConfiguredTaskRunner
from metaclaw.config import Settings
from metaclaw.skills.critic import NOT_CONFIGURED, critic_endpoint
from tasks.skills import diagnose_groups, find_failures, write_diagnoses


@flow(name="diagnose", task_runner=ConfiguredTaskRunner())
def diagnose_flow(limit: int = 1000) -> dict[str, Any]:
    """Diagnose up to `limit` undiagnosed failed turns; publishes a report artifact."""
    settings = Settings()
    endpoint = critic_endpoint(settings)
    if endpoint is None:
        create_markdown_artifact(
            f"## Diagnose\n\nSkipped: {NOT_CONFIGURED}.\n",
            key="diagnose-report",
            description="skipped: no critic",
        )
        return {"skipped": NOT_CONFIGURED, "diagnoses": 0}
    groups = find_failures(settings, endpoint.model, limit)
    report = diagnose_groups(settings, groups) if groups else None
    rows = report.rows if report else []
    written = write_diagnoses(settings, rows)
    categories = Counter(r["root_cause_category"] for r in rows)
    errors = report.errors if report else []
    lines = [
        "## Diagnose",
        "",
        f"- critic: `{endpoint.model}`; failure threshold: reward < "
        f"{settings.skills.failure_threshold}",
        f"- failure groups (sessions): **{len(groups)}**, failed turns: "
        f"{sum(len(g.turn_ids) for g in groups)}",
        f"- diagnoses written: **{written}** — "
        + (", ".join(f"{k}: {v}" for k, v in categories.most_common()) or "none"),
        f"- critic calls: {report.calls if report else 0} of a budget of "
        f"{settings.critic.max_calls_per_run}; rejected or failed: {len(errors)}",
    ]
    if errors:
        lines += ["", "### Rejected critic answers", ""] + [f"- {e[:300]}" for e in errors[:10]]
    create_markdown_artifact(
        "\n".join(lines) + "\n", key="diagnose-report", description="Failed turns → root causes"
    )
    if rows:
        create_table_artifact(
            [
                {
                    "diagnosis_id": r["diagnosis_id"][:12],
                    "session": r["session_id"],
                    "turns": len(r["turn_ids"]),
                    "category": r["root_cause_category"],
                    "explanation": r["explanation"][:200],
                }
                for r in rows
            ],
            key="diagnose-diagnoses",
            description="Diagnoses written this run",
        )
    return {
        "groups": len(groups),
        "diagnoses": written,
        "errors": errors,
        "categories": dict(categories),
        "critic_calls": report.calls if report else 0,
    }


if __name__ == "__main__":
    diagnose_flow()
