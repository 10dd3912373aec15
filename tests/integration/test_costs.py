"""Costs over a real ledger: the views price users' and the pipeline's calls, the judge and the
critic record their calls, and the daily budget cuts the judge to one vote and then stops it
and the critic (real WAL, real DuckDB, real HTTP to the stub judge and critic)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from metaclaw.config import CostSettings, CriticSettings, JudgeSettings, ModelPrice, Settings
from metaclaw.costs.overview import cost_status
from metaclaw.ledger import WalWriter, query
from metaclaw.ledger.records import now_micros, to_micros
from metaclaw.scoring.scorer import plan, score
from metaclaw.skills.critic import Critic, CriticBudgetExceeded
from tests.helpers import rows
from tests.stubs.critic_server import StubCritic
from tests.stubs.judge_server import StubJudge

S = 1_000_000
DOLLAR_A_TOKEN = ModelPrice(input=1_000_000, output=1_000_000)  # $1 per token: easy sums


@pytest.fixture(scope="module")
def judge_stub() -> Iterator[StubJudge]:
    with StubJudge() as stub:
        yield stub


@pytest.fixture()
def judge(judge_stub: StubJudge) -> StubJudge:
    judge_stub.reset()
    return judge_stub


def _settings(home: Path, judge: StubJudge | None = None, **costs: Any) -> Settings:
    judge_options: dict[str, Any] = {"local_default": False, "retry_backoff_s": 0.01}
    if judge is not None:
        judge_options.update(base_url=judge.base_url, model="stub-judge")
    prices = {"stub-judge": DOLLAR_A_TOKEN, "critic-stub": DOLLAR_A_TOKEN}
    return Settings(
        home=home,
        judge=JudgeSettings(**judge_options),
        costs=CostSettings(prices=prices, **costs),
    )


def _calls(settings: Settings, *calls: tuple[str, int, datetime | None]) -> None:
    """model_calls rows: (role, tokens in, when), each costing $tokens at DOLLAR_A_TOKEN."""
    with WalWriter(settings.paths.wal) as wal:
        wal.append(
            "model_calls",
            [
                {
                    "call_id": f"seeded-{uuid.uuid4().hex}",
                    "ts": to_micros(when) if when else now_micros(),
                    "role": role,
                    "model": "stub-judge" if role == "judge" else "critic-stub",
                    "turn_id": "t",
                    "input_tokens": tokens,
                    "output_tokens": 0,
                    "local": False,
                }
                for role, tokens, when in calls
            ],
        )


def _turns(settings: Settings, *turns: dict[str, Any]) -> None:
    with WalWriter(settings.paths.wal) as wal:
        wal.append("turns", list(turns))


def _chat_turns(n: int) -> list[dict[str, Any]]:
    """n single-turn sessions an hour old: each is ready for the judge."""
    t0 = now_micros() - 3600 * S
    return [
        {
            "turn_id": f"q{i}",
            "session_id": f"s{i}",
            "turn_index": 0,
            "ts_start": t0 + i * S,
            "ts_end": t0 + i * S + S // 2,
            "request": {"messages": [{"role": "user", "content": f"question {i}?"}]},
            "completion_text": f"answer {i}",
            "status": "ok",
            "finish_reason": "stop",
        }
        for i in range(n)
    ]


def test_the_views_price_users_and_pipeline_calls(home: Path) -> None:
    settings = Settings(
        home=home, costs=CostSettings(prices={"gpt-4o": ModelPrice(input=2.0, output=8.0)})
    )
    now = now_micros()
    base = {"session_id": "s", "ts_start": now, "status": "ok"}
    _turns(
        settings,
        {
            **base,
            "turn_id": "openai",
            "model": "gpt-4o-2024-08-06",
            "usage": {"prompt_tokens": 1000, "completion_tokens": 500},
        },
        {
            **base,
            "turn_id": "anthropic",
            "model": "claude-3-5-haiku-20241022",
            "usage": {"input_tokens": 1000, "output_tokens": 500},
        },
        {
            **base,
            "turn_id": "policy",
            "model": "SmolLM2",
            "served_by": "policy",
            "usage": {"prompt_tokens": 9, "completion_tokens": 9},
        },
        {
            **base,
            "turn_id": "unknown",
            "model": "my-finetune",
            "usage": {"prompt_tokens": 10, "completion_tokens": 10},
        },
        {**base, "turn_id": "garbage", "model": "gpt-4o", "usage": {"prompt_tokens": "lots"}},
    )
    with WalWriter(settings.paths.wal) as wal:
        wal.append(
            "model_calls",
            [
                {
                    "call_id": f"v{i}",
                    "ts": now,
                    "role": "judge",
                    "model": "gpt-4o",
                    "turn_id": "openai",
                    "input_tokens": 100,
                    "output_tokens": 10,
                    "local": False,
                }
                for i in range(3)
            ],
        )
    got = {(r["turn_id"], r["role"]): r for r in rows(settings.paths, "SELECT * FROM costs")}
    assert got["openai", "user"]["usd"] == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)  # override
    assert got["anthropic", "user"]["usd"] == pytest.approx((1000 * 0.8 + 500 * 4.0) / 1e6)
    assert got["policy", "user"]["usd"] == 0.0
    assert got["unknown", "user"]["usd"] is None and got["unknown", "user"]["unpriced_calls"] == 1
    garbage = got["garbage", "user"]
    assert (garbage["input_tokens"], garbage["usd"], garbage["unpriced_calls"]) == (None, None, 1)
    judged = got["openai", "judge"]
    assert (judged["calls"], judged["input_tokens"], judged["output_tokens"]) == (3, 300, 30)
    assert judged["usd"] == pytest.approx(3 * (100 * 2.0 + 10 * 8.0) / 1e6)
    # the same view through the defaults only: the override is the connection's
    default = dict(
        query(
            Settings(home=home).paths,
            "SELECT turn_id, usd FROM costs WHERE role = 'user' AND turn_id = 'openai'",
        )[1]
    )
    assert default["openai"] == pytest.approx((1000 * 2.5 + 500 * 10.0) / 1e6)
    today, week, budget = cost_status(settings)
    assert week.startswith("costs last 7 days: judge 3 calls, 330 tokens, $0.0008;")
    assert today.startswith("costs today (UTC): judge 3 calls, 330 tokens, $0.0008;")
    assert "user 5 calls" in today and "(+2 unpriced)" in today
    assert budget == "daily budget: none (costs.daily_budget_usd)"


@pytest.mark.parametrize(
    ("judge_usd", "critic_usd", "votes"),
    [(50, 29, 3), (50, 30, 1), (70, 29, 1), (99, 0, 1), (60, 40, 0), (150, 0, 0)],
)
def test_the_judge_steps_down_at_the_configured_spend(
    home: Path, judge: StubJudge, judge_usd: int, critic_usd: int, votes: int
) -> None:
    settings = _settings(home, judge, daily_budget_usd=100.0)
    yesterday = datetime.now(UTC) - timedelta(days=1, hours=1)
    _calls(
        settings,
        ("judge", judge_usd, None),
        ("critic", critic_usd, None),
        ("judge", 1000, yesterday),  # yesterday's spend is yesterday's
    )
    _turns(  # users' calls are theirs: never counted against the pipeline's budget
        settings,
        {
            "turn_id": "u",
            "session_id": "u",
            "ts_start": now_micros(),
            "model": "stub-judge",
            "usage": {"prompt_tokens": 10_000, "completion_tokens": 0},
            "status": "ok",
        },
    )
    the_plan = plan(settings)
    assert the_plan.judge_votes == votes
    if votes == 3:
        assert the_plan.budget_note is None
        assert the_plan.judge_version is not None and the_plan.judge_version.endswith("/m3")
    elif votes == 1:
        assert the_plan.judge_version is not None and the_plan.judge_version.endswith("/m1")
        assert f"spent (${judge_usd + critic_usd:.4f} of $100.00)" in (the_plan.budget_note or "")
    else:
        assert the_plan.budget_note == (
            f"daily budget reached: ${judge_usd + critic_usd:.4f} of $100.00; "
            "no judge or critic calls until 00:00 UTC"
        )


def test_near_the_budget_one_vote_at_it_none(home: Path, judge: StubJudge) -> None:
    settings = _settings(home, judge, daily_budget_usd=100.0)
    _calls(settings, ("judge", 80, None))
    _turns(settings, *_chat_turns(3))

    near = score(settings)
    assert (near.totals.judged, near.totals.calls, judge.stats()["calls"]) == (3, 3, 3)
    judged = rows(
        settings.paths, "SELECT turn_id, scorer_version FROM rewards WHERE signal = 'judge'"
    )
    assert {r["turn_id"] for r in judged} == {"q0", "q1", "q2"}
    assert all(r["scorer_version"].endswith("/m1") for r in judged)
    recorded = rows(
        settings.paths,
        "SELECT turn_id, model, input_tokens, output_tokens, local FROM model_calls "
        "WHERE call_id NOT LIKE 'seeded-%' ORDER BY turn_id",
    )
    assert recorded == [
        {
            "turn_id": f"q{i}",
            "model": "stub-judge",
            "input_tokens": 1,
            "output_tokens": 1,
            "local": False,
        }
        for i in range(3)
    ]
    assert "one judge vote per turn" in (near.to_dict()["daily_budget"] or "")

    # the three votes cost $6: 86 of 100 spent; then $14 more of critic calls reach it
    _calls(settings, ("critic", 14, None))
    _turns(
        settings,
        *[dict(t, turn_id=f"late{i}", session_id=f"late{i}") for i, t in enumerate(_chat_turns(2))],
    )
    judge.reset()
    spent = score(settings)
    assert (spent.totals.calls, judge.stats()["calls"], spent.totals.judged) == (0, 0, 0)
    assert spent.totals.judge_skipped == 2 and spent.totals.implicit_rows > 0
    assert spent.to_dict()["daily_budget"] == (
        "daily budget reached: $100.0000 of $100.00; no judge or critic calls until 00:00 UTC"
    )


def test_the_critic_records_its_calls_and_stops_at_the_budget(home: Path) -> None:
    from pydantic import BaseModel

    class Answer(BaseModel):
        category: str

    with StubCritic() as stub:
        settings = _settings(home, daily_budget_usd=100.0).model_copy(
            update={"critic": CriticSettings(base_url=stub.base_url + "/v1", model="critic-stub")}
        )
        stub.script('{"category": "tool_misuse"}')
        critic = Critic.from_settings(settings)
        assert critic.ask("system", "why did turn t7 fail?", Answer, "t7").category == "tool_misuse"
        (call,) = rows(settings.paths, "SELECT * FROM model_calls")
        assert (call["role"], call["model"], call["turn_id"]) == ("critic", "critic-stub", "t7")
        assert call["input_tokens"] == 6 and call["output_tokens"] == 2  # the stub counts words

        _calls(settings, ("judge", 100, None))
        stopped = Critic.from_settings(settings)
        with pytest.raises(CriticBudgetExceeded, match=r"daily budget reached: \$108\.0000"):
            stopped.ask("system", "why?", Answer, "t8")
        assert len(stub.requests()) == 1, "no call once the budget is spent"
