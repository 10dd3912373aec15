"""What costs look like to a person: `metaclaw status` lines and the score flow's daily chart
(pure: built from `store.RoleDay` rows)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

from metaclaw.costs.budget import DailyBudget
from metaclaw.costs.store import RoleDay

ROLES = ("judge", "critic", "user")
BAR_WIDTH = 30


def _tokens(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


def _usd(rows: Sequence[RoleDay]) -> str:
    usd = f"${sum(r.usd for r in rows):.4f}"
    unpriced = sum(r.unpriced for r in rows)
    return f"{usd} (+{unpriced} unpriced)" if unpriced else usd


def totals_line(label: str, rows: Sequence[RoleDay]) -> str:
    """calls, tokens and USD by role over `rows`."""
    parts = []
    for role in ROLES:
        mine = [r for r in rows if r.role == role]
        if mine:
            tokens = sum(r.input_tokens + r.output_tokens for r in mine)
            calls = sum(r.calls for r in mine)
            parts.append(f"{role} {calls} calls, {_tokens(tokens)} tokens, {_usd(mine)}")
    return f"{label}: " + ("; ".join(parts) if parts else "no calls")


def budget_line(budget: DailyBudget) -> str:
    if budget.budget_usd is None:
        return "daily budget: none (costs.daily_budget_usd)"
    line = (
        f"daily budget (judge + critic): ${budget.spent_usd:.4f} of ${budget.budget_usd:.2f} "
        f"({budget.spent_usd / budget.budget_usd:.0%})"
    )
    note = budget.note()
    return f"{line}; {note}" if note else line


def status_lines(rows: Sequence[RoleDay], budget: DailyBudget, today: date) -> list[str]:
    """For `metaclaw status`: today, the last 7 days (rows must cover them), the budget."""
    return [
        totals_line("costs today (UTC)", [r for r in rows if r.day == today]),
        totals_line("costs last 7 days", [r for r in rows if r.day > today - timedelta(days=7)]),
        budget_line(budget),
    ]


def daily_markdown(rows: Sequence[RoleDay], budget: DailyBudget, today: date, days: int) -> str:
    """USD per UTC day and role over the last `days` days, with a bar per day (artifact
    `daily-cost` of the score flow)."""
    span = [today - timedelta(days=i) for i in range(days - 1, -1, -1)]
    cell = {(r.day, r.role): r for r in rows}
    totals = {d: sum(r.usd for r in rows if r.day == d) for d in span}
    peak = max(totals.values(), default=0.0)
    lines = [
        f"## Daily cost (last {days} days, UTC)",
        "",
        f"- {budget_line(budget)}",
        "",
        "| day | " + " | ".join(ROLES) + " | total | |",
        "|---|" + "---|" * len(ROLES) + "---|---|",
    ]
    for d in span:
        cells = [_usd([cell[(d, role)]]) if (d, role) in cell else "-" for role in ROLES]
        bar = "█" * round(BAR_WIDTH * totals[d] / peak) if peak > 0 else ""
        lines.append(f"| {d.isoformat()} | " + " | ".join(cells) + f" | ${totals[d]:.4f} | {bar} |")
    unpriced = sum(r.unpriced for r in rows)
    if unpriced:
        lines += [
            "",
            f"{unpriced} calls have no price (their model is not in the price table, or the "
            "response gave no usage): set `costs.prices` to count them.",
        ]
    return "\n".join(lines) + "\n"
