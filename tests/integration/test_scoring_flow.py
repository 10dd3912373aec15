"""The `score` flow under a real Prefect API: rewards, idempotent re-runs, the run's artifact,
and judge–human agreement in the artifact and in `metaclaw status`."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metaclaw.config import LedgerPaths
from metaclaw.ledger import WalWriter
from metaclaw.ledger.records import now_micros
from tests.helpers import free_port, rows
from tests.integration.test_scoring_judge import chat
from tests.stubs.judge_server import StubJudge


@pytest.fixture(scope="module")
def judge_stub() -> Iterator[StubJudge]:
    with StubJudge() as stub:
        yield stub


async def _artifacts(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
        )


def test_score_flow(
    prefect_harness: str, home: Path, judge_stub: StubJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.score import score_flow

    monkeypatch.setenv("METACLAW_JUDGE__BASE_URL", judge_stub.base_url)
    monkeypatch.setenv("METACLAW_JUDGE__MODEL", "stub-judge")
    monkeypatch.setenv("METACLAW_PROXY__PORT", str(free_port()))
    paths = LedgerPaths(home)
    turns = chat(
        "flow",
        [
            ("What is the capital of Italy?", "Milan [[votes:-1,-1,-1]]"),
            ("No, I meant the capital city", "Rome [[votes:+1,+1,0]]"),
        ],
    )
    with WalWriter(paths.wal) as wal:
        wal.append("turns", turns)
        wal.append(
            "feedback",
            [{"feedback_id": "fb1", "turn_id": "flow-0", "value": -1.0, "ts": now_micros()}],
        )
    first = score_flow()
    assert first["judged"] == 2 and first["calls"] == 6
    assert first["judge_values"] == {"-1": 1, "+1": 1}
    assert first["implicit_kinds"] == {"correction": 1, "session_length": 1}
    assert first["judge_human_agreement"] == 1.0 and first["judge_human_turns"] == 1
    rewards = {
        r["turn_id"]: (r["reward"], r["reward_source"])
        for r in rows(paths, "SELECT * FROM turn_rewards")
    }
    assert rewards == {"flow-0": (-1.0, "explicit"), "flow-1": (1.0, "judge")}

    second = score_flow()
    assert second["rewards_written"] == 0 and second["calls"] == 0

    reports = asyncio.run(_artifacts("score-report"))
    assert len(reports) >= 2
    latest, earlier = reports[0].data, reports[1].data
    assert "reward rows written: **0**" in latest
    assert "turns judged: **2**" in earlier and "**6** judge calls" in earlier
    assert "judge–human agreement: 100% (1/1" in earlier
    table = asyncio.run(_artifacts("score-rewards"))
    assert table and "explicit" in str(table[0].data)
    chart = asyncio.run(_artifacts("daily-cost"))[0].data  # six votes and two turns, none priced
    assert "## Daily cost (last 14 days, UTC)" in chart and "8 calls have no price" in chart

    from metaclaw.cli import app

    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    assert "judge–human agreement: 100% (1/1" in result.output
    assert "judge/stub-judge/p1/m3" in result.output
    assert "judge 6 calls, 12 tokens, $0.0000 (+6 unpriced)" in result.output
