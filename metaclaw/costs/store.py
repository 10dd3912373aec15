"""Reading the cost views: spend per UTC day and role, and today's budget state."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from metaclaw.config import Settings
from metaclaw.costs.budget import PIPELINE_ROLES, DailyBudget
from metaclaw.ledger.reader import connect


@dataclass(frozen=True, slots=True)
class RoleDay:
    """One role's calls on one UTC day."""

    day: date
    role: str
    calls: int
    input_tokens: int
    output_tokens: int
    usd: float  # the priced calls' sum
    unpriced: int  # calls whose cost is unknown (no price for the model, or no usage)


def day_start(now: datetime, days_back: int = 0) -> datetime:
    """00:00 UTC of the day `days_back` days before `now`'s."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight - timedelta(days=days_back)


_DAILY_SQL = """
SELECT CAST(timezone('UTC', ts) AS DATE) AS day, role, count(*),
       coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0), coalesce(sum(usd), 0),
       count(*) FILTER (WHERE usd IS NULL)
FROM call_costs WHERE ts >= $since
GROUP BY day, role ORDER BY day, role
"""


def recent_costs(settings: Settings, days: int, now: datetime | None = None) -> list[RoleDay]:
    """Spend per day and role over the last `days` UTC days, today included."""
    since = day_start(now or datetime.now(UTC), days - 1)
    con = connect(settings.paths)
    try:
        return [RoleDay(*row) for row in con.execute(_DAILY_SQL, {"since": since}).fetchall()]
    finally:
        con.close()


def budget_of(
    settings: Settings, rows: Sequence[RoleDay], now: datetime | None = None
) -> DailyBudget:
    """The budget state given the days' costs (today's among them)."""
    today = day_start(now or datetime.now(UTC)).date()
    spent = sum(r.usd for r in rows if r.day == today and r.role in PIPELINE_ROLES)
    costs = settings.costs
    return DailyBudget(spent, costs.daily_budget_usd, costs.degrade_share)


def daily_budget(settings: Settings, now: datetime | None = None) -> DailyBudget:
    """Today's budget state; the ledger is only read when a budget is set."""
    limited = settings.costs.daily_budget_usd is not None
    return budget_of(settings, recent_costs(settings, 1, now) if limited else [], now)
