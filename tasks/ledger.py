"""Ledger tasks."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import task

from metaclaw.config import Settings
from metaclaw.ledger import ingest


@task(name="ingest-wal", retries=2, retry_delay_seconds=[1, 5])
def ingest_wal(settings: Settings) -> dict[str, Any]:
    """Move sealed WAL segments into Parquet and compact. Safe to retry: ingest is idempotent."""
    report = ingest(settings.paths, settings.ledger)
    return {**asdict(report), "total_rows": report.total_rows}
