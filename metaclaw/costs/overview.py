"""Costs as a person sees them, read from the ledger: `metaclaw status` lines and the score
flow's daily chart (rendering in `report.py`, reading in `store.py`)."""

from __future__ import annotations

from datetime import UTC, datetime

from metaclaw.config import Settings
from metaclaw.costs.report import daily_markdown, status_lines
from metaclaw.costs.store import budget_of, recent_costs

STATUS_DAYS = 7
CHART_DAYS = 14


def cost_status(settings: Settings, now: datetime | None = None) -> list[str]:
    now = now or datetime.now(UTC)
    rows = recent_costs(settings, STATUS_DAYS, now)
    return status_lines(rows, budget_of(settings, rows, now), now.astimezone(UTC).date())


def cost_chart(settings: Settings, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    rows = recent_costs(settings, CHART_DAYS, now)
    return daily_markdown(
        rows, budget_of(settings, rows, now), now.astimezone(UTC).date(), CHART_DAYS
    )
