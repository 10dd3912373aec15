"""Derived views: SQL over the table views, created in this order on every connection.

Each part of MetaClaw that needs a combined reading of the ledger (e.g. the training reward per
turn) adds its view here, so every reader — flows, `metaclaw sql`, tests — sees the same one.
"""

from __future__ import annotations

from metaclaw.scoring.combine import VIEWS as SCORING_VIEWS

DERIVED_VIEWS: dict[str, str] = {
    # scoring: turn_feedback, turn_rewards, judge_agreement (metaclaw/scoring/combine.py)
    **SCORING_VIEWS,
}
