"""`model_calls` rows: one per LLM call the pipeline made (judge vote, critic answer).

Why a row per call and not a total per run: a call is what the provider bills, and a row per
call lets the `costs` view attribute spend to the turn it was about and to the day it was made.
A call that raised (timeout, HTTP error) gave no usage and is not recorded: providers do not
bill a request they refused.
"""

from __future__ import annotations

import uuid
from typing import Literal

from metaclaw.config import LedgerPaths
from metaclaw.costs.usage import Usage
from metaclaw.ledger.records import Row, now_micros
from metaclaw.ledger.wal import append_rows

Role = Literal["judge", "critic"]


def call_row(role: Role, model: str, turn_id: str | None, usage: Usage, *, local: bool) -> Row:
    return {
        "call_id": uuid.uuid4().hex,  # every call is billed, a retry included: never deduplicated
        "ts": now_micros(),
        "role": role,
        "model": model,
        "turn_id": turn_id,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "local": local,
    }


def record_calls(paths: LedgerPaths, rows: list[Row]) -> None:
    """Durably append the calls' rows (nothing to do for none)."""
    if rows:
        append_rows(paths.wal, "model_calls", rows)
