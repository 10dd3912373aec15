"""Scoring against a real judge server process (tests/stubs/judge_server.py) and a real ledger:
next-state judging, malformed votes, idempotent re-runs, timeouts/errors, budget, concurrency."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from pydantic import SecretStr

from metaclaw.config import JudgeSettings, Settings, UpstreamSettings
from metaclaw.ledger import WalWriter
from metaclaw.ledger.records import now_micros
from metaclaw.scoring.judge import Judge, JudgeEndpoint, judge_endpoint
from metaclaw.scoring.scorer import ScoreReport, score, status_line
from tests.helpers import rows
from tests.stubs.judge_server import StubJudge

S = 1_000_000


@pytest.fixture(scope="module")
def judge_stub() -> Iterator[StubJudge]:
    with StubJudge() as stub:
        yield stub


@pytest.fixture()
def stub(judge_stub: StubJudge) -> StubJudge:
    judge_stub.reset()
    return judge_stub


def _settings(home: Path, stub: StubJudge | None, **judge: Any) -> Settings:
    options: dict[str, Any] = {"retry_backoff_s": 0.01, "timeout_s": 5.0, **judge}
    if stub is not None:
        options.update(base_url=stub.base_url, model="stub-judge")
    else:  # no judge at all, not the local policy server default
        options.setdefault("local_default", False)
    return Settings(home=home, judge=JudgeSettings(**options))


def chat(sid: str, exchanges: list[tuple[str, str]], *, ago_s: float = 3600) -> list[dict]:
    """A session of plain chat turns; each request carries the whole history."""
    t0 = now_micros() - int(ago_s * S)
    history: list[dict[str, Any]] = []
    out = []
    for i, (user, reply) in enumerate(exchanges):
        history.append({"role": "user", "content": user})
        out.append(
            {
                "turn_id": f"{sid}-{i}",
                "session_id": sid,
                "turn_index": i,
                "ts_start": t0 + i * S,
                "ts_end": t0 + i * S + S // 2,
                "request": {"model": "m", "messages": list(history)},
                "completion_text": reply,
                "status": "ok",
                "finish_reason": "stop",
            }
        )
        history.append({"role": "assistant", "content": reply})
    return out


def seed(settings: Settings, *sessions: list[dict]) -> None:
    with WalWriter(settings.paths.wal) as wal:
        wal.append("turns", [t for s in sessions for t in s])


def rewards(settings: Settings, signal: str = "judge") -> dict[str, dict[str, Any]]:
    found = rows(settings.paths, "SELECT * FROM rewards WHERE signal = '" + signal + "'")
    return {r["turn_id"]: r for r in found}


def test_judge_reads_next_state_and_writes_majority(home: Path, stub: StubJudge) -> None:
    settings = _settings(home, stub)
    france = chat(
        "fr",
        [
            ("What is the capital of France?", "Lyon. [[votes:-1,-1,+1]]"),
            ("No, that's wrong. It is Paris.", "Right, Paris. [[votes:+1,garbage,json+1]]"),
            ("Thanks!", "You're welcome. [[votes:+1,-1,0]]"),
        ],
    )
    call = {
        "id": "c1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
    }
    tools = [
        {
            "turn_id": "tool-0",
            "session_id": "tool",
            "turn_index": 0,
            "ts_start": now_micros() - 3000 * S,
            "status": "ok",
            "finish_reason": "tool_calls",
            "request": {"messages": [{"role": "user", "content": "weather in Oslo?"}]},
            "completion_text": None,
            "tool_calls": [call],
        },
        {
            "turn_id": "tool-1",
            "session_id": "tool",
            "turn_index": 1,
            "ts_start": now_micros() - 2999 * S,
            "status": "ok",
            "finish_reason": "stop",
            "request": {
                "messages": [
                    {"role": "user", "content": "weather in Oslo?"},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": "c1", "content": "Error: unknown city"},
                ]
            },
            "completion_text": "I could not find Oslo.",
        },
    ]
    seed(settings, france, tools)
    report = score(settings)
    got = rewards(settings)
    assert {t: r["value"] for t, r in got.items()} == {
        "fr-0": -1.0,
        "fr-1": 1.0,
        "fr-2": 0.0,
        "tool-0": 1.0,
        "tool-1": 1.0,
    }
    assert report.totals.judged == 5 and report.totals.calls == 15
    assert report.totals.invalid_votes == 1 and report.totals.ties == 1
    first = got["fr-0"]
    votes = orjson.loads(first["votes"]) if isinstance(first["votes"], str) else first["votes"]
    assert votes["model"] == "stub-judge" and votes["prompt_version"] == "p1"
    assert sorted(votes["votes"]) == [-1, -1, 1] and votes["next_state"] == "user"
    assert first["scorer_version"] == "judge/stub-judge/p1/m3"
    assert first["reason"] == "scripted vote -1"
    assert "tie" in got["fr-2"]["reason"]
    prompts = {r["messages"][1]["content"] for r in stub.requests()}
    fr0 = next(
        p
        for p in prompts
        if "Lyon. [[votes"
        in p.split("## What happened next")[0].split("## Assistant turn under review")[-1]
    )
    assert "No, that's wrong. It is Paris." in fr0.split("## What happened next")[1]
    tool0 = next(
        p
        for p in prompts
        if "→ calls weather"
        in p.split("## What happened next")[0].split("## Assistant turn under review")[-1]
    )
    assert "[tool result] Error: unknown city" in tool0
    # the implicit detectors saw the same conversation
    assert set(rewards(settings, "implicit:correction")) == {"fr-0"}
    assert set(rewards(settings, "implicit:tool_error")) == {"tool-0"}


def test_rerun_writes_nothing_and_calls_no_judge(home: Path, stub: StubJudge) -> None:
    settings = _settings(home, stub)
    seed(settings, chat("a", [("hello there friend", "hi"), ("thanks a lot", "np")]))
    first = score(settings)
    assert first.totals.rewards_written > 0 and first.totals.calls == 6
    count = rows(settings.paths, "SELECT count(*) AS n FROM rewards")[0]["n"]
    second = score(settings)
    assert second.totals.rewards_written == 0 and second.totals.calls == 0
    assert second.sessions_pending == 0
    assert rows(settings.paths, "SELECT count(*) AS n FROM rewards")[0]["n"] == count


def test_unreadable_panel_writes_nothing_and_is_retried(home: Path, stub: StubJudge) -> None:
    settings = _settings(home, stub)
    seed(settings, chat("m", [("q1 " * 3, "one [[votes:garbage,empty,noscore,oob,conflict,-1]]")]))
    first = score(settings)
    assert first.totals.judge_failed == 1 and "no valid vote" in first.totals.errors[0]
    assert rewards(settings) == {}
    second = score(settings)  # now two unreadable votes and one -1: the turn is judged
    assert rewards(settings)["m-0"]["value"] == -1.0 and second.totals.judged == 1
    assert second.totals.invalid_votes == 2


def test_timeouts_write_nothing_then_succeed_next_run(home: Path, stub: StubJudge) -> None:
    settings = _settings(home, stub, timeout_s=0.5, retries=0)
    seed(settings, chat("slow", [("slow question", "answer [[votes:hang,hang,hang,+1]]")]))
    start = time.monotonic()
    first = score(settings)
    assert time.monotonic() - start < 4, "a per-call timeout bounds the run"
    assert first.totals.judge_failed == 1 and first.totals.failed_calls == 3
    assert "Timeout" in first.totals.errors[0]
    assert rewards(settings) == {}
    second = score(settings)
    assert second.totals.judged == 1 and rewards(settings)["slow-0"]["value"] == 1.0


def test_server_errors_are_retried_with_backoff(home: Path, stub: StubJudge) -> None:
    settings = _settings(home, stub, retries=2, concurrency=1)
    seed(settings, chat("flaky", [("flaky question", "answer [[votes:e500,e503,+1]]")]))
    report = score(settings)
    assert report.totals.judged == 1 and report.totals.retries == 2
    assert report.totals.calls == 5 and rewards(settings)["flaky-0"]["value"] == 1.0


def test_a_busy_server_is_waited_for_as_long_as_it_asks(home: Path, stub: StubJudge) -> None:
    """A full policy server answers 503 + Retry-After: 1 (background work waits behind users).
    The vote is retried no sooner than that, not after the 10 ms backoff configured here, and
    is not lost."""
    settings = _settings(home, stub, retries=2, votes=1)
    seed(settings, chat("busy", [("busy question", "answer [[votes:busy,+1]]")]))
    report = score(settings)
    busy, retried = stub.stats()["busy_at"]
    assert retried - busy >= 1.0
    assert report.totals.judged == 1 and report.totals.retries == 1
    assert rewards(settings)["busy-0"]["value"] == 1.0


def test_backoff_is_capped_and_honours_retry_after(home: Path) -> None:
    endpoint = JudgeEndpoint("http://127.0.0.1:9/v1", "m")
    options = {"retry_backoff_s": 4.0, "retry_max_backoff_s": 5.0}
    judge = Judge(endpoint, JudgeSettings(**options))
    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")

    def busy(after: str) -> openai.APIStatusError:
        response = httpx.Response(503, headers={"retry-after": after}, request=request)
        return openai.InternalServerError("busy", response=response, body=None)

    timeout = openai.APITimeoutError(request=request)
    assert all(2.0 <= judge._backoff(0, timeout) <= 5.0 for _ in range(50))
    assert judge._backoff(6, timeout) == 5.0  # 4 s · 2^6 would be over four minutes
    assert judge._backoff(0, busy("60")) == 5.0
    small = Judge(endpoint, JudgeSettings(retry_backoff_s=0.01))
    assert small._backoff(0, busy("3")) == 3.0 and small._backoff(0, busy("soon")) < 0.1


def test_client_errors_are_not_retried(home: Path, stub: StubJudge) -> None:
    settings = _settings(home, stub, retries=3)
    seed(settings, chat("bad", [("bad request question", "answer [[votes:e400]]")]))
    report = score(settings)
    assert report.totals.calls == 3 and report.totals.retries == 0
    assert report.totals.judge_failed == 1 and rewards(settings) == {}


def test_refused_judge_stops_calling(home: Path, stub: StubJudge) -> None:
    settings = _settings(home, stub, concurrency=1)
    seed(
        settings,
        chat("auth", [("first", "a [[votes:e401]]"), ("second one", "b"), ("third one", "c")]),
    )
    report = score(settings)
    assert report.totals.calls == 1, "no more calls once the judge refuses us"
    assert "AuthenticationError" in report.totals.errors[0]
    assert rewards(settings) == {}
    assert set(rewards(settings, "implicit:session_length")) == {"auth-2"}, "implicit still runs"


def test_budget_caps_calls_and_the_rest_waits(home: Path, stub: StubJudge) -> None:
    settings = _settings(home, stub)
    seed(settings, *(chat(f"b{i}", [(f"question number {i}", "ok")]) for i in range(5)))
    first = score(settings, max_calls=7)
    assert first.totals.calls == 6 and first.totals.judged == 2
    assert first.totals.judge_skipped == 3
    second = score(settings, max_calls=100)
    assert second.totals.judged == 3 and len(rewards(settings)) == 5


def test_concurrency_is_bounded(home: Path) -> None:
    with StubJudge(latency=0.3) as slow:
        settings = _settings(home, slow, concurrency=4)
        seed(settings, *(chat(f"c{i}", [(f"concurrent question {i}", "ok")]) for i in range(8)))
        start = time.monotonic()
        report = score(settings)
        elapsed = time.monotonic() - start
        stats = slow.stats()
    assert report.totals.judged == 8 and stats["calls"] == 24
    assert stats["peak_concurrency"] == 4
    assert elapsed >= 24 / 4 * 0.3 - 0.05


def test_last_turn_is_judged_once_the_session_is_idle(home: Path, stub: StubJudge) -> None:
    active = chat("live", [("first question here", "one"), ("second question", "two")], ago_s=5)
    settings = _settings(home, stub, session_idle_s=600)
    seed(settings, active)
    first = score(settings)
    assert set(rewards(settings)) == {"live-0"} and first.totals.judge_waiting == 1
    assert rewards(settings, "implicit:session_length") == {}
    idle = _settings(home, stub, session_idle_s=1)
    second = score(idle)
    assert set(rewards(idle)) == {"live-0", "live-1"} and second.totals.judged == 1
    last_prompt = stub.requests()[-1]["messages"][1]["content"]
    assert "the session ended after this turn" in last_prompt
    assert set(rewards(idle, "implicit:session_length")) == {"live-1"}
    assert score(idle).totals.rewards_written == 0


def test_rescore_history_with_a_new_judge_version(home: Path, stub: StubJudge) -> None:
    settings = _settings(home, stub)
    seed(settings, chat("h", [("history question", "old answer")]))
    score(settings)
    v2 = _settings(home, stub, version_tag="v2")
    assert score(v2).totals.calls == 0, "history keeps its scores unless re-scoring is asked"
    report = score(v2, rescore=True)
    assert report.totals.judged == 1
    versions = {
        r["scorer_version"]
        for r in rows(v2.paths, "SELECT scorer_version FROM rewards WHERE signal = 'judge'")
    }
    assert versions == {"judge/stub-judge/p1/m3", "judge/stub-judge/p1/m3/v2"}
    assert rows(v2.paths, "SELECT judge_version FROM turn_rewards") == [
        {"judge_version": "judge/stub-judge/p1/m3/v2"}
    ]
    assert score(v2, rescore=True).totals.calls == 0


def test_rescore_stops_reading_history_once_the_budget_is_spent(
    home: Path, stub: StubJudge
) -> None:
    settings = _settings(home, stub)
    seed(settings, *(chat(f"r{i}", [(f"old question {i}", "old answer")]) for i in range(3)))
    score(settings)
    v2 = _settings(home, stub, version_tag="v2")
    report = score(v2, rescore=True, max_calls=3, batch_sessions=1)
    assert report.sessions_pending == 3 and report.totals.judged == 1
    assert report.totals.sessions == 1, "batches waiting only for the judge are not loaded"
    assert score(v2, rescore=True, batch_sessions=1).totals.judged == 2


def test_without_a_judge_only_implicit_signals(home: Path) -> None:
    settings = _settings(home, None)
    assert judge_endpoint(settings) is None
    seed(settings, chat("n", [("what is two plus two", "five"), ("No, that's wrong", "four")]))
    report: ScoreReport = score(settings)
    assert report.judge is None and report.totals.calls == 0
    assert rows(settings.paths, "SELECT turn_id, reward, reward_source FROM turn_rewards") == [
        {"turn_id": "n-0", "reward": -1.0, "reward_source": "implicit"}
    ]
    assert "none (implicit + explicit feedback only)" in status_line(settings)


def test_judge_endpoint_resolution(home: Path) -> None:
    base: dict[str, Any] = {"home": home, "upstream": UpstreamSettings()}
    with pytest.raises(ValueError, match=r"judge\.model is required"):
        judge_endpoint(Settings(**base, judge=JudgeSettings(base_url="http://j/v1")))
    with pytest.raises(ValueError, match="METACLAW_JUDGE__BASE_URL"):
        judge_endpoint(Settings(**base, judge=JudgeSettings(model="gpt")))
    reuse = judge_endpoint(
        Settings(
            home=home,
            judge=JudgeSettings(model="gpt"),
            upstream=UpstreamSettings(base_url="http://up/v1/", api_key=SecretStr("sk-secret")),
        )
    )
    assert reuse is not None and reuse.base_url == "http://up/v1" and reuse.model == "gpt"
    assert reuse.api_key is not None and "sk-secret" not in repr(reuse)
    own = judge_endpoint(
        Settings(
            **base,
            judge=JudgeSettings(base_url="http://j/v1", model="judge-m", api_key=SecretStr("k")),
        )
    )
    assert own is not None and own.base_url == "http://j/v1" and own.model == "judge-m"
