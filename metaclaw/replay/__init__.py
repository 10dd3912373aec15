"""Backfill: import historical conversation logs into the ledger (the `backfill` flow).

Formats (auto-detected from content): OpenClaw session JSONL v3 (`openclaw`), the SQLite
transcript store of OpenClaw 2026.x (`openclaw-sqlite`), OpenClaw trajectory exports
(`openclaw-trajectory`) and OpenAI chat JSONL (`openai`); directories are searched recursively.
Parsers are pure streams (file → turns/feedback/problems); `Importer` does the I/O.
"""

from metaclaw.replay.detect import Discovery, Source, detect_format, discover, partition
from metaclaw.replay.importer import Importer, ImportSummary, ResumeLog, parse_source
from metaclaw.replay.lines import parse_ts
from metaclaw.replay.model import (
    FORMATS,
    Feedback,
    Item,
    NotALogError,
    ParseOptions,
    Problem,
    SessionDone,
    Turn,
)

__all__ = [
    "FORMATS",
    "Discovery",
    "Feedback",
    "ImportSummary",
    "Importer",
    "Item",
    "NotALogError",
    "ParseOptions",
    "Problem",
    "ResumeLog",
    "SessionDone",
    "Source",
    "Turn",
    "detect_format",
    "discover",
    "parse_source",
    "parse_ts",
    "partition",
]
