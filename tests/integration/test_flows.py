"""Flows under a real Prefect API (the session's test harness), and prefect.yaml's deployments."""

from __future__ import annotations

import asyncio
import importlib
import uuid
from pathlib import Path

import yaml

from metaclaw.config import LedgerPaths, Settings
from metaclaw.ledger import WalWriter
from metaclaw.ledger.manifest import Manifest
from metaclaw.ledger.records import now_micros
from tests.helpers import REPO, rows


def _seed(paths: LedgerPaths, n: int) -> None:
    with WalWriter(paths.wal) as wal:
        wal.append(
            "turns",
            [
                {
                    "turn_id": uuid.uuid4().hex,
                    "session_id": "s",
                    "turn_index": i,
                    "ts_start": now_micros(),
                }
                for i in range(n)
            ],
        )


def test_ingest_flow_is_idempotent(prefect_harness: str, home: Path) -> None:
    from prefect.client.orchestration import get_client

    from flows.ingest import ingest_flow

    paths = LedgerPaths(home)
    _seed(paths, 7)
    state = ingest_flow(return_state=True)
    first = state.result()
    assert first["rows"] == {"turns": 7} and first["segments"] == 1
    manifest_version = Manifest.load(paths.manifest).version
    second = ingest_flow()
    assert second["total_rows"] == 0 and second["segments"] == 0
    assert Manifest.load(paths.manifest).version == manifest_version, "nothing rewritten"
    assert rows(paths, "SELECT count(*) AS n FROM turns") == [{"n": 7}]

    async def artifacts() -> list:
        async with get_client() as client:
            from prefect.client.schemas.filters import (
                ArtifactFilter,
                ArtifactFilterFlowRunId,
                ArtifactFilterKey,
            )

            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["ingest-report"]),
                    flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
                )
            )

    found = asyncio.run(artifacts())  # the first run's report (the second has nothing to say)
    assert len(found) == 1 and "rows landed: **7**" in found[0].data


def test_prefect_yaml_matches_served_deployments() -> None:
    from flows.deployments import FLOWS, build_deployments

    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    declared = {d["name"]: d for d in config["deployments"]}
    served = {d.name: d for d in build_deployments(Settings(_env_file=None))}
    assert set(declared) == set(served) == set(FLOWS)
    for name, spec in declared.items():
        module, _, attr = spec["entrypoint"].partition(":")
        flow = getattr(importlib.import_module(module.removesuffix(".py").replace("/", ".")), attr)
        assert flow is FLOWS[name], f"{name}: entrypoint points at another flow"
        deployment = served[name]
        if not spec["schedules"]:  # on demand only (e.g. backfill)
            assert not deployment.schedules, f"{name}: served with a schedule, declared without"
        else:
            assert (
                spec["schedules"][0]["interval"]
                == deployment.schedules[0].schedule.interval.total_seconds()
            )
        assert spec.get("concurrency_limit") == deployment.concurrency_limit
        assert sorted(spec["tags"]) == sorted(deployment.tags)

        def ids(value: str | list[str]) -> list[str]:
            return [value] if isinstance(value, str) else list(value)

        declared_triggers = [
            (set(t["expect"]), ids(t["match"]["prefect.resource.id"]))
            for t in spec.get("triggers", [])
        ]
        served_triggers = [
            (set(t.expect), ids(t.match["prefect.resource.id"])) for t in deployment.triggers
        ]
        assert declared_triggers == served_triggers, f"{name}: triggers differ"
        assert spec["work_pool"]["name"] == "metaclaw"


def test_prefect_deploy_all_to_a_process_work_pool(prefect_harness: str, tmp_path: Path) -> None:
    """`prefect deploy --all` (what the README tells work-pool users to run) deploys cleanly."""
    import os
    import subprocess
    import sys

    import httpx

    env = {**os.environ, "PREFECT_API_URL": prefect_harness, "PREFECT_HOME": str(tmp_path)}
    prefect = [sys.executable, "-m", "prefect"]
    pool = subprocess.run(
        [*prefect, "work-pool", "create", "metaclaw", "--type", "process"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pool.returncode == 0 or "already exists" in pool.stdout + pool.stderr, pool.stderr
    out = subprocess.run(
        [*prefect, "--no-prompt", "deploy", "--all"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    deployed = httpx.post(f"{prefect_harness}/deployments/filter", json={}).json()
    names = {d["name"] for d in deployed if d.get("work_pool_name") == "metaclaw"}
    assert {
        "ingest",
        "score",
        "diagnose",
        "evolve",
        "train",
        "deploy",
        "backfill",
        "pipeline",
    } <= names
