"""The score flow's batches on a Dask cluster (`flows.task_runner = "dask"`) give exactly the
rewards the thread pool gives on the same turns; the runner is chosen by configuration."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.runners import budget_shares, task_runner
from metaclaw.config import LedgerPaths, Settings
from metaclaw.ledger import WalWriter
from tests.helpers import free_port, rows
from tests.integration.test_scoring_judge import chat
from tests.stubs.judge_server import StubJudge

SESSIONS = 230  # > one batch of 200 sessions: two score-batch tasks to fan out
VOTES = ("-1", "0", "+1")


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    from distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
    ) as local:
        yield local


def _seed(home: Path) -> None:
    turns = []
    for s in range(SESSIONS):
        vote = VOTES[s % 3]
        turns += chat(
            f"d{s}",
            [
                (f"question {s}", f"answer {s} [[votes:{vote}]]"),
                (f"no, wrong {s}", f"better {s} [[votes:{VOTES[(s + 1) % 3]}]]"),
            ],
        )
    with WalWriter(LedgerPaths(home).wal) as wal:
        wal.append("turns", turns)


def _rewards(home: Path) -> set[tuple]:
    found = rows(
        LedgerPaths(home), "SELECT reward_id, turn_id, signal, value, scorer_version FROM rewards"
    )
    return {tuple(r.values()) for r in found}


def test_dask_runner_gives_the_thread_pool_rewards(
    prefect_harness: str, tmp_path: Path, cluster: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.score import score_flow

    monkeypatch.setenv("METACLAW_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("METACLAW_JUDGE__VOTES", "1")
    monkeypatch.setenv("METACLAW_JUDGE__MODEL", "stub-judge")
    monkeypatch.setenv("METACLAW_PROXY__PORT", str(free_port()))
    results = {}
    with StubJudge() as judge:
        monkeypatch.setenv("METACLAW_JUDGE__BASE_URL", judge.base_url)
        for kind in ("thread", "dask"):
            home = tmp_path / kind
            _seed(home)
            monkeypatch.setenv("METACLAW_HOME", str(home))
            monkeypatch.setenv("METACLAW_FLOWS__TASK_RUNNER", kind)
            monkeypatch.setenv("METACLAW_FLOWS__DASK_ADDRESS", cluster.scheduler_address)
            before = _dask_tasks(cluster)
            results[kind] = score_flow()
            ran_on_dask = _dask_tasks(cluster) - before
            assert ran_on_dask == (2 if kind == "dask" else 0), kind
    thread, dask = _rewards(tmp_path / "thread"), _rewards(tmp_path / "dask")
    assert len(thread) >= SESSIONS * 2, "every turn got a judge reward (and implicit ones)"
    assert thread == dask
    judged = {r[1]: r[3] for r in thread if r[2] == "judge"}
    assert judged["d0-0"] == -1.0 and judged["d1-0"] == 0.0 and judged["d2-0"] == 1.0
    for key in ("judged", "rewards_written", "calls", "judge_values", "implicit_kinds"):
        assert results["thread"][key] == results["dask"][key], key


def _dask_tasks(cluster: object) -> int:
    """score-batch tasks the cluster's workers have run (Dask keys carry the function's name)."""
    prefixes = cluster.scheduler.task_prefixes  # type: ignore[attr-defined]
    return sum(
        p.state_counts["processing"]
        for name, p in prefixes.items()
        if name.startswith("score_session_batch")
    )


def test_task_runner_follows_configuration(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    monkeypatch.setenv("METACLAW_FLOWS__THREAD_WORKERS", "3")
    runner = task_runner(Settings())
    assert isinstance(runner, ThreadPoolTaskRunner) and runner._max_workers == 3
    monkeypatch.setenv("METACLAW_FLOWS__TASK_RUNNER", "dask")
    monkeypatch.setenv("METACLAW_FLOWS__DASK_ADDRESS", "tcp://10.1.2.3:8786")
    runner = task_runner(Settings())
    assert isinstance(runner, DaskTaskRunner) and runner.address == "tcp://10.1.2.3:8786"
    monkeypatch.setenv("METACLAW_FLOWS__TASK_RUNNER", "ray")
    with pytest.raises(ValueError, match="task_runner"):
        Settings()


def test_budget_shares_are_deterministic_and_exact() -> None:
    assert budget_shares(10, 3) == [4, 3, 3]
    assert budget_shares(2, 4) == [1, 1, 0, 0]
    assert sum(budget_shares(3000, 7)) == 3000
    assert budget_shares(5, 0) == []
