"""What the importers produce, whatever the log format.

A parser turns one file into a stream of items: `Turn` and `Feedback` rows ready for the ledger,
`Problem`s for input it had to skip (with the precise place, so a user can fix or ignore it),
and `SessionDone` markers so callers can count sessions without holding them. Streams, not
lists: a history of millions of turns must import in flat memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Row = dict[str, Any]

FORMATS = ("openclaw", "openclaw-sqlite", "openclaw-trajectory", "openai")
"""Source formats; imported turns carry `source = "backfill:<format>"`."""


class NotALogError(ValueError):
    """The path is not a conversation log in any format we read (a hard error for the user)."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Problem:
    """Input skipped on import. `where` is `file:line` (SQLite: `file#session:seq`)."""

    where: str
    message: str
    turns_lost: int = 0

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(slots=True)
class Turn:
    row: Row


@dataclass(slots=True)
class Feedback:
    row: Row


@dataclass(slots=True)
class SessionDone:
    session_id: str
    turns: int


Item = Turn | Feedback | Problem | SessionDone


@dataclass(frozen=True, slots=True)
class ParseOptions:
    """Limits that keep one bad record from costing unbounded memory (config `replay.*`)."""

    max_record_bytes: int = 32 * 1024 * 1024
    max_inline_image_bytes: int = 256 * 1024


@dataclass
class Tally:
    """Counts over a parse, for summaries (kept small: problems beyond `keep` are only counted)."""

    sessions: int = 0
    turns: int = 0
    feedback: int = 0
    skipped: int = 0
    turns_lost: int = 0
    problems: list[Problem] = field(default_factory=list)
    keep: int = 1000

    def add(self, item: Item) -> None:
        if isinstance(item, Turn):
            self.turns += 1
        elif isinstance(item, Feedback):
            self.feedback += 1
        elif isinstance(item, SessionDone):
            self.sessions += 1
        else:
            self.skipped += 1
            self.turns_lost += item.turns_lost
            if len(self.problems) < self.keep:
                self.problems.append(item)
