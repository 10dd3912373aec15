"""# Evolve: diagnoses → better skills, and harmful skills out

The skill library learns here (docs/skills.md). Each run:

1. **efficacy** — recomputes, per skill version, its uses and mean reward with vs without it in
   similar contexts, stores the statistics (the proxy's ranking reads them), and retires skills
   whose effect is confidently negative (restored ones are pinned and left alone);
2. **propose** — clusters the diagnoses not yet considered by this critic, shows the critic each
   cluster with the nearest existing skills, and gets `create`, `revise`, `merge` or `none`;
3. **commit** — validates every proposal (size limits; no secret exfiltration or "ignore the
   user": skills are a prompt-injection vector), turns near-duplicate creations into revisions,
   commits the accepted changes as one new skill-set version with lineage, and logs every
   considered diagnosis so it is never re-sent;
4. **record** — writes `skill_events` to the ledger and publishes the skill diffs as an artifact.

Steps 2–4 need a critic; without one, step 1 still runs and the rest is skipped with a message.
Runs are serialized (deployment concurrency limit 1), and the writing steps hold the strict global
limit `metaclaw-skills-writer`, so one skills writer runs cluster-wide whatever started it (the
library's file lock covers one machine only; LanceDB on S3 has no safe concurrent commits).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.concurrency.sync import concurrency

from metaclaw.config import Settings
from metaclaw.skills.critic import NOT_CONFIGURED, critic_endpoint
from tasks.skills import (
    SKILLS_WRITER_LIMIT,
    WRITER_LEASE_S,
    commit_skills,
    ensure_skills_writer_limit,
    pending_clusters,
    propose_changes,
    record_events,
    refresh_efficacy,
)


def _efficacy_table(stats: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:+.3f}"

    return [
        {
            "ref": s["ref"],
            "uses": s["uses"],
            "mean_with": fmt(s["mean_with"]),
            "mean_without": fmt(s["mean_without"]),
            "n_without": s["n_without"],
            "effect": fmt(s["effect"]),
        }
        for s in stats
    ]


@flow(name="evolve")
def evolve_flow() -> dict[str, Any]:
    """Efficacy + retirement, then diagnoses → skill changes; publishes diffs as an artifact."""
    settings = Settings()
    ensure_skills_writer_limit()
    with concurrency(SKILLS_WRITER_LIMIT, occupy=1, strict=True, lease_duration=WRITER_LEASE_S):
        efficacy = refresh_efficacy(settings)
    summary: dict[str, Any] = {
        "retired": efficacy["retired"],
        "turns": efficacy["turns"],
        "created": [],
        "updated": [],
        "merged": [],
        "rejected": [],
        "skipped": [],
    }
    lines = [
        "## Evolve",
        "",
        f"- efficacy: {len(efficacy['stats'])} skill versions over {efficacy['turns']} "
        f"rewarded turns; auto-retired: **{len(efficacy['retired'])}**",
    ]
    lines += [f"  - {r['skill']} (`{r['ref']}`): {r['reason']}" for r in efficacy["retired"]]
    lines += [
        f"- proposal {v['skill']} (`{v['ref']}`) {v['event']}: {v['reason']}"
        for v in efficacy["verdicts"]
    ]
    summary["verdicts"] = efficacy["verdicts"]
    endpoint = critic_endpoint(settings)
    if endpoint is None:
        lines.append(f"- evolution skipped: {NOT_CONFIGURED}")
        summary["skipped_reason"] = NOT_CONFIGURED
    else:
        clusters = pending_clusters(settings, endpoint.model)
        proposals, calls = propose_changes(settings, clusters) if clusters else ([], 0)
        with concurrency(SKILLS_WRITER_LIMIT, occupy=1, strict=True, lease_duration=WRITER_LEASE_S):
            outcome, result = commit_skills(settings, proposals, endpoint.model)
        record_events(settings, result)
        for ch in outcome.changes:
            key = {"created": "created", "updated": "updated", "merged": "merged"}.get(ch.event)
            if key:
                summary[key].append(ch.skill.ref)
        summary["rejected"] = [why for _, why in outcome.rejected]
        summary["skipped"] = [why for _, why in outcome.skipped]
        summary["critic_calls"] = calls
        lines += [
            f"- critic `{endpoint.model}`: {len(clusters)} clusters of diagnoses, {calls} calls",
            f"- created **{len(summary['created'])}**, revised **{len(summary['updated'])}**, "
            f"merged **{len(summary['merged'])}**; rejected {len(outcome.rejected)}, "
            f"no change {len(outcome.skipped)}",
            f"- skill set version now **{result.set_version}**",
        ]
        if outcome.rejected:
            lines += ["", "### Rejected proposals", ""]
            lines += [f"- {why[:300]}" for _, why in outcome.rejected]
        if outcome.diffs:
            lines += ["", "### Skill diffs", "", *outcome.diffs]
    create_markdown_artifact(
        "\n".join(lines) + "\n",
        key="evolve-report",
        description="Efficacy, retirements and skill diffs",
    )
    if efficacy["stats"]:
        create_table_artifact(
            _efficacy_table(efficacy["stats"]),
            key="skill-efficacy",
            description="Per skill version: reward with vs without",
        )
    return summary


if __name__ == "__main__":
    evolve_flow()
