"""The deploy flow under the Prefect harness: a verdict, its artifacts, and idempotent re-runs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from metaclaw.config import LedgerPaths, Settings
from metaclaw.deploy.store import read_book
from tests.deploy_helpers import (
    LORA_RANK,
    add_candidates,
    candidate_row,
    eval_turn_ids,
    seed_turns,
    train_toward,
)
from tests.helpers import free_port
from tests.stubs.deploy_server import PairwiseJudgeStub
from tests.tiny_model import save_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def judge() -> Iterator[PairwiseJudgeStub]:
    with PairwiseJudgeStub("prefer:Paris") as stub:
        yield stub


@pytest.mark.slow
def test_deploy_flow_promotes_publishes_and_is_idempotent(
    prefect_harness: str,
    home: Path,
    tmp_path: Path,
    judge: PairwiseJudgeStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.deploy import deploy_flow

    tiny = save_tiny_model(tmp_path / "model")
    env = {
        "TRAINING__BASE_MODEL": str(tiny),
        "TRAINING__LORA_RANK": str(LORA_RANK),
        "TRAINING__DEVICE": "cpu",
        "JUDGE__BASE_URL": judge.base_url,
        "JUDGE__MODEL": "stub-pairwise",
        "POLICY__PORT": str(free_port()),
        "DEPLOY__MAX_NEW_TOKENS": "12",
        "DEPLOY__MIN_EVAL_PROMPTS": "6",
        "DEPLOY__EVAL_FRACTION": "0.5",
        "DEPLOY__MAX_KL": "1000",
    }
    for key, value in env.items():
        monkeypatch.setenv(f"METACLAW_{key}", value)
    settings = Settings()
    paths = LedgerPaths(home)
    seed_turns(paths, eval_turn_ids(settings, 8))
    worse = train_toward(tiny, tmp_path / "c", "b", "blue")
    better = train_toward(tiny, tmp_path / "c", "p", "Paris")
    add_candidates(paths, candidate_row("ckpt-1", worse, 1), candidate_row("ckpt-2", better, 2))

    result = deploy_flow()

    assert result["status"] == "promoted" and result["checkpoint_id"] == "ckpt-2", result
    assert result["superseded"] == ["ckpt-1"] and result["low"] > 0.5
    assert result["policy_server"] == "unreachable" and result["guards_tripped"] == []
    assert result["reconciliation"]["status"] == "unreachable"  # no server: nothing to fix
    assert result["k"] == 1 and result["wins"] >= 7 and result["p_value"] <= result["alpha_k"]
    book = read_book(paths)
    promoted = book.get("ckpt-2").latest
    assert promoted.actor is not None and promoted.actor.startswith("deploy-flow:")
    assert book.get("ckpt-1").status == "rejected"

    async def artifacts() -> dict[str, Any]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(
                        any_=["deploy-report", "deploy-comparison", "learning-curve"]
                    )
                )
            )
        return {a.key: a for a in sorted(found, key=lambda a: a.created)}

    found = asyncio.run(artifacts())
    assert "**ckpt-2** → **promoted**" in found["deploy-report"].data
    assert "| kl_from_base | no |" in found["deploy-report"].data
    assert found["deploy-comparison"].type == "table"
    assert "candidate as A" in found["deploy-comparison"].data
    assert "Learning curve" in found["learning-curve"].data

    rows = sum(len(c.events) for c in book.checkpoints.values())
    again = deploy_flow()
    assert again["status"] == "idle"
    assert sum(len(c.events) for c in read_book(paths).checkpoints.values()) == rows
