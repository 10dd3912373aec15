"""Replay a folder of historical logs into the ledger (backfill), from Python.

    python examples/backfill.py ~/.openclaw/agents/main ./exports/openai-chat.jsonl

Formats are detected from content (OpenClaw session JSONL, OpenClaw SQLite transcripts and
trajectory exports, OpenAI chat JSONL); folders are searched recursively. Importing is
idempotent — re-running imports nothing new — so it is safe to schedule. The imported turns
are then scored and trained on by the flows like live ones (off-policy, labelled `backfill:*`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from metaclaw import MetaClawConfig
from metaclaw.ledger import query
from metaclaw.replay import Importer, ImportSummary, discover


def backfill(paths: list[Path], settings: MetaClawConfig | None = None) -> ImportSummary:
    settings = settings or MetaClawConfig()
    found = discover(paths, "auto", settings.replay.max_record_bytes)
    for error in found.errors:
        print(f"not a log: {error}", file=sys.stderr)
    return Importer(settings).import_all(found.sources)


if __name__ == "__main__":
    settings = MetaClawConfig()
    summary = backfill([Path(p) for p in sys.argv[1:]] or [Path(".")], settings)
    _, rows = query(settings.paths, "SELECT count(*) FROM turns WHERE source LIKE 'backfill:%'")
    print(
        f"imported {summary.turns} turns from {summary.files} files "
        f"({summary.resumed} already imported); backfilled turns in the ledger: {rows[0][0]}"
    )
