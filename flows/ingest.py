"""# Ingest: the WAL → Parquet step

The proxy lands every turn in a write-ahead segment before answering the client. This flow
moves sealed segments into hive-partitioned Parquet under a manifest, compacts small files and
deletes what compaction replaced. It is idempotent: re-running it writes nothing new.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from metaclaw.config import Settings
from tasks.ledger import ingest_wal


def _report_markdown(report: dict[str, Any]) -> str:
    rows = "\n".join(f"| {table} | {n} |" for table, n in sorted(report["rows"].items()))
    return (
        "## Ingest\n\n"
        f"- segments ingested: **{report['segments']}** "
        f"(still being written: {report['active_segments']})\n"
        f"- rows landed: **{report['total_rows']}**, duplicates dropped: {report['duplicates']}\n"
        f"- files compacted: {report['compacted_files']}, files deleted: "
        f"{report['deleted_files']}\n\n" + ("| table | rows |\n|---|---|\n" + rows if rows else "")
    )


TURNS_LANDED = "metaclaw.turns.landed"  # the score deployment is triggered by this event


@flow(name="ingest")
def ingest_flow() -> dict[str, Any]:
    """Land sealed WAL segments as Parquet; publishes a summary artifact and, when turns
    landed, one event for the batch (not one per turn)."""
    report = ingest_wal(Settings())
    if report["segments"] or report["compacted_files"]:
        create_markdown_artifact(
            _report_markdown(report), key="ingest-report", description="WAL → Parquet"
        )
    turns = report["rows"].get("turns", 0)
    if turns:
        emit_event(
            event=TURNS_LANDED,
            resource={"prefect.resource.id": "metaclaw.ledger.turns"},
            payload={"turns": turns},
        )
    return report


if __name__ == "__main__":
    ingest_flow()
