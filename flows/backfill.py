"""# Backfill: historical conversation logs → ledger → score → skills → (train)

Users arrive with months of conversations already behind them. This flow imports what really
happened — OpenClaw session JSONL v3, OpenClaw 2026.x SQLite transcripts and trajectory exports,
OpenAI chat JSONL — as `turns` rows marked `source = backfill:<format>` (off-policy data: no
token ids, no logprobs), then lets the rest of the pipeline learn from them like from live
traffic:

1. **discover** the log files under `path` (directories recursively, format auto-detected);
2. **import** them in partitions (groups of files), at most `replay.concurrency` at a time, each
   a retried task; a resume log under `METACLAW_HOME/replay/` makes a re-run after a crash start
   at the file that was in progress, and stable turn ids make any re-import a no-op;
3. **ingest** the WAL into Parquet;
4. **score, diagnose, evolve** — and **train** when `train=true` — by running those flows (the
   ones this installation has), so a backfill ends with rewards, skills and, if asked, a
   candidate checkpoint trained off-policy on the history.

A markdown artifact summarises the run; a table artifact lists skipped input (file:line, why).
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture, as_completed

from flows.runners import ConfiguredTaskRunner
from flows.steps import STEP_FLOWS
from metaclaw.config import Settings
from metaclaw.replay import ImportSummary, Source, parse_ts, partition
from metaclaw.replay.importer import IMPORTED_TABLES
from tasks.ledger import ingest_wal
from tasks.replay import discover_logs, import_partition

DOWNSTREAM = ("score", "diagnose", "evolve")


def _import_bounded(
    settings: Settings, parts: list[list[Source]], since: int | None
) -> ImportSummary:
    """Submit partitions so that at most `replay.concurrency` run at once."""
    summary = ImportSummary()
    pending: list[PrefectFuture[dict[str, Any]]] = []
    for i, part in enumerate(parts):
        if len(pending) >= settings.replay.concurrency:
            done = next(as_completed(pending))
            pending.remove(done)
            summary.merge(ImportSummary.from_dict(done.result()))
        pending.append(import_partition.submit(settings, [s.to_dict() for s in part], since, i))
    for future in pending:
        summary.merge(ImportSummary.from_dict(future.result()))
    return summary


def _run_downstream(train: bool) -> dict[str, str]:
    """Run the downstream step flows; a failure is recorded, then fails the run."""
    outcome: dict[str, str] = {}
    for name in (*DOWNSTREAM, *(("train",) if train else ())):
        try:
            STEP_FLOWS[name]()
            outcome[name] = "completed"
        except Exception as exc:
            outcome[name] = f"failed: {type(exc).__name__}: {exc}"
    return outcome


def _markdown(
    paths: list[str],
    summary: ImportSummary,
    ingested: int,
    parts: int,
    downstream: dict[str, str],
    ignored: int,
) -> str:
    flows = "\n".join(f"| {name} | {state} |" for name, state in downstream.items())
    return (
        "## Backfill\n\n"
        f"- from: {', '.join(f'`{p}`' for p in paths)}\n"
        f"- files imported: **{summary.files}** in {parts} partition(s); already imported "
        f"before: {summary.resumed}; not logs (ignored): {ignored}\n"
        f"- sessions: **{summary.sessions}**, turns: **{summary.turns}**, feedback: "
        f"{summary.feedback}, before `since`: {summary.before_since}\n"
        f"- skipped records: {summary.skipped} (turns lost with them: {summary.turns_lost}); "
        f"files that failed: {summary.failed_files}\n"
        f"- rows landed in the ledger: **{ingested}** (re-imports add nothing)\n\n"
        "| downstream flow | outcome |\n|---|---|\n" + flows
    )


@flow(name="backfill", task_runner=ConfiguredTaskRunner())
def backfill_flow(
    path: str | list[str],
    format: str = "auto",
    since: str | None = None,
    train: bool = False,
) -> dict[str, Any]:
    """Import historical logs, then score, diagnose, evolve (and train when `train`)."""
    settings = Settings()
    paths = [path] if isinstance(path, str) else [str(p) for p in path]
    since_us = parse_ts(since) if since else None
    if since and since_us is None:
        raise ValueError(f"since={since!r} is not a date or time (e.g. 2026-03-01)")
    found = discover_logs(settings, paths, format)
    sources = [Source.from_dict(s) for s in found["sources"]]
    parts = partition(sources, settings.replay.partition_files, settings.replay.partition_bytes)
    summary = _import_bounded(settings, parts, since_us)
    report = ingest_wal(settings)
    ingested = summary.ingested_rows + sum(report["rows"].get(t, 0) for t in IMPORTED_TABLES)
    downstream = _run_downstream(train)
    create_markdown_artifact(
        _markdown(paths, summary, ingested, len(parts), downstream, len(found["ignored"])),
        key="backfill-report",
        description="historical logs → ledger",
    )
    if summary.problems:
        create_table_artifact(
            [
                {"where": p.partition(": ")[0], "why": p.partition(": ")[2]}
                for p in summary.problems[:500]
            ],
            key="backfill-skipped",
            description="input skipped on import (file:line, reason)",
        )
    failed = {name: state for name, state in downstream.items() if state.startswith("failed")}
    if failed:
        raise RuntimeError(
            f"backfill imported {summary.turns} turns, but downstream flows failed: {failed}"
        )
    return {
        **summary.to_dict(),
        "ledger_rows": ingested,
        "partitions": len(parts),
        "downstream": downstream,
        "ignored": found["ignored"][:100],
    }


if __name__ == "__main__":
    import sys

    backfill_flow(sys.argv[1:] or ".")
