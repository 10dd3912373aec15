"""Backfill tasks: find the logs, import one partition of files. Both are safe to retry: the
resume log skips files already imported and ledger ingest drops rows it already has."""

from __future__ import annotations

from typing import Any

from prefect import task

from metaclaw.config import Settings
from metaclaw.replay import Importer, Source, discover
from metaclaw.replay.roots import check_paths


@task(name="discover-logs", retries=1, retry_delay_seconds=2)
def discover_logs(settings: Settings, paths: list[str], fmt: str) -> dict[str, Any]:
    """Log files under `paths`; a named path that is not a log, or lies outside
    `replay.allowed_roots`, fails the run with the reason."""
    check_paths(paths, settings.replay.allowed_roots, settings.paths.home)
    found = discover(paths, fmt, settings.replay.max_record_bytes)
    if found.errors:
        raise ValueError("not a conversation log: " + "; ".join(str(e) for e in found.errors))
    return {"sources": [s.to_dict() for s in found.sources], "ignored": found.ignored}


@task(
    name="import-logs",
    task_run_name="import-logs-{part}",
    retries=2,
    retry_delay_seconds=[2, 10],
    tags=["metaclaw", "backfill"],
)
def import_partition(
    settings: Settings, sources: list[dict[str, Any]], since: int | None, part: int
) -> dict[str, Any]:
    """Import one partition's files into the WAL (ingest runs once, after every partition)."""
    importer = Importer(settings, since=since)
    for source in sources:
        importer.import_source(Source.from_dict(source))
    importer.flush()
    return importer.summary.to_dict()
