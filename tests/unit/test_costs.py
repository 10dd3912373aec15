"""Usage normalisation, the price table, the budget's decision and the cost reports (pure)."""

from __future__ import annotations

from datetime import date

import orjson
import pytest

from metaclaw.config import DEFAULT_PRICES, ModelPrice, Settings
from metaclaw.costs.budget import DailyBudget
from metaclaw.costs.pricing import cost_usd, price_for
from metaclaw.costs.report import daily_markdown, status_lines
from metaclaw.costs.store import RoleDay
from metaclaw.costs.usage import Usage, normalise, of_response

OPENAI = {"prompt_tokens": 1200, "completion_tokens": 300, "total_tokens": 1500}
ANTHROPIC = {"input_tokens": 1200, "output_tokens": 300, "cache_read_input_tokens": 0}


def test_openai_and_anthropic_usage_read_the_same() -> None:
    assert normalise(OPENAI) == normalise(ANTHROPIC) == Usage(1200, 300)
    assert normalise(orjson.dumps(ANTHROPIC).decode()) == Usage(1200, 300)  # the ledger's text
    assert of_response({"choices": [], "usage": OPENAI}) == Usage(1200, 300)


def test_openai_and_anthropic_calls_add_up_to_the_same_cost() -> None:
    prices = {"m": ModelPrice(input=3.0, output=15.0)}
    calls = [normalise(OPENAI), normalise(ANTHROPIC)]
    total = sum(cost_usd("m", u.input_tokens, u.output_tokens, prices) or 0 for u in calls)
    assert total == pytest.approx(2 * (1200 * 3.0 + 300 * 15.0) / 1e6)


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (None, Usage()),
        ("not json", Usage()),
        ([1, 2], Usage()),
        ({}, Usage()),
        ({"prompt_tokens": "12", "completion_tokens": 3}, Usage(None, 3)),
        ({"prompt_tokens": 12.5, "completion_tokens": -1}, Usage()),
        ({"prompt_tokens": True, "completion_tokens": None}, Usage()),
        ({"input_tokens": 0, "output_tokens": 7}, Usage(0, 7)),
        ({"prompt_tokens": 5, "input_tokens": 9}, Usage(5, None)),  # OpenAI's name wins
    ],
)
def test_garbage_usage_is_unknown_never_an_error(usage: object, expected: Usage) -> None:
    assert normalise(usage) == expected


def test_prices_match_exactly_then_by_longest_prefix() -> None:
    assert price_for("gpt-4o", DEFAULT_PRICES) == DEFAULT_PRICES["gpt-4o"]
    assert price_for("gpt-4o-mini-2024-07-18", DEFAULT_PRICES) == DEFAULT_PRICES["gpt-4o-mini"]
    assert price_for("gpt-4o-2024-08-06", DEFAULT_PRICES) == DEFAULT_PRICES["gpt-4o"]
    assert (
        price_for("claude-sonnet-4-20250514", DEFAULT_PRICES) == DEFAULT_PRICES["claude-sonnet-4"]
    )
    assert price_for("my-finetune", DEFAULT_PRICES) is None
    assert price_for(None, DEFAULT_PRICES) is None


def test_unknown_is_not_free_and_local_is() -> None:
    prices = {"gpt-4o": ModelPrice(input=2.5, output=10.0)}
    assert cost_usd("gpt-4o", 1_000_000, 100_000, prices) == pytest.approx(3.5)
    assert cost_usd("mystery", 10, 10, prices) is None
    assert cost_usd("gpt-4o", None, 10, prices) is None
    assert cost_usd("SmolLM2-135M-Instruct", None, None, prices, local=True) == 0.0


def test_price_overrides_merge_over_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METACLAW_CONFIG", "/nonexistent/metaclaw.toml")
    monkeypatch.setenv("METACLAW_COSTS__DAILY_BUDGET_USD", "2.5")
    monkeypatch.setenv(
        "METACLAW_COSTS__PRICES",
        '{"gpt-4o": {"input": 1, "output": 2}, "azure-deploy": {"input": 0.1, "output": 0.2}}',
    )
    settings = Settings()
    assert settings.costs.daily_budget_usd == 2.5
    table = settings.paths.prices
    assert table["gpt-4o"] == ModelPrice(input=1, output=2)
    assert table["azure-deploy"] == ModelPrice(input=0.1, output=0.2)
    assert table["claude-3-5-haiku"] == DEFAULT_PRICES["claude-3-5-haiku"]


@pytest.mark.parametrize(
    ("spent", "votes", "exhausted"),
    [(0.0, 3, False), (0.79, 3, False), (0.8, 1, False), (0.99, 1, False), (1.0, 0, True)],
)
def test_budget_cuts_votes_then_everything(spent: float, votes: int, exhausted: bool) -> None:
    budget = DailyBudget(spent, 1.0, 0.8)
    assert budget.judge_votes(3) == votes
    assert budget.exhausted is exhausted
    assert (budget.note() is None) == (votes == 3)


def test_no_budget_never_cuts() -> None:
    budget = DailyBudget(1e9, None, 0.8)
    assert budget.judge_votes(5) == 5 and budget.note() is None and not budget.exhausted


def test_the_note_says_how_much_of_what() -> None:
    assert DailyBudget(1.25, 1.0, 0.8).note() == (
        "daily budget reached: $1.2500 of $1.00; no judge or critic calls until 00:00 UTC"
    )
    assert "85% spent" in (DailyBudget(0.85, 1.0, 0.8).note() or "")


TODAY = date(2025, 6, 20)
ROWS = [
    RoleDay(date(2025, 6, 10), "user", 9, 9000, 900, 5.0, 0),  # outside the last 7 days
    RoleDay(date(2025, 6, 18), "judge", 30, 30_000, 3000, 0.03, 0),
    RoleDay(TODAY, "judge", 6, 6000, 600, 0.006, 0),
    RoleDay(TODAY, "critic", 2, 4000, 800, 0.02, 1),
    RoleDay(TODAY, "user", 4, 2000, 400, 0.5, 0),
]


def test_status_lines_total_today_and_the_week() -> None:
    today, week, budget = status_lines(ROWS, DailyBudget(0.026, 1.0, 0.8), TODAY)
    assert today == (
        "costs today (UTC): judge 6 calls, 6.6k tokens, $0.0060; critic 2 calls, 4.8k tokens, "
        "$0.0200 (+1 unpriced); user 4 calls, 2.4k tokens, $0.5000"
    )
    assert week.startswith("costs last 7 days: judge 36 calls, 39.6k tokens, $0.0360;")
    assert "$5.0" not in week
    assert budget == "daily budget (judge + critic): $0.0260 of $1.00 (3%)"


def test_daily_chart_has_a_row_per_day_and_scales_its_bars() -> None:
    chart = daily_markdown(ROWS, DailyBudget(0.026, None, 0.8), TODAY, 14)
    lines = chart.splitlines()
    days = [line for line in lines if line.startswith("| 2025-")]
    assert len(days) == 14 and days[-1].startswith("| 2025-06-20 |")
    assert days[0].startswith("| 2025-06-07 | - | - | - | $0.0000 |")
    assert "| 2025-06-10 | - | - | $5.0000 | $5.0000 | " + "█" * 30 + " |" in lines
    assert "$0.0200 (+1 unpriced)" in days[-1] and "daily budget: none" in chart
    assert "1 calls have no price" in chart
