"""The backfill flow under the Prefect test harness: partitions, bounded concurrency,
artifacts, idempotent re-runs, downstream flows."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from metaclaw.config import LedgerPaths
from tests.helpers import REPO, rows

FIXTURES = REPO / "tests" / "fixtures" / "replay"
REAL_V3 = Path("/work/shared/data/openclaw-sessions-v3")


def _artifact(key: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )

    return asyncio.run(read())


def _task_runs(flow_run_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> list:
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )

    return asyncio.run(read())


@pytest.mark.slow  # runs the installed downstream flows (score, …) as well
@pytest.mark.skipif(not REAL_V3.is_dir(), reason="shared v3 sample data not present")
def test_backfill_flow_partitions_imports_and_is_idempotent(
    prefect_harness: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.backfill import backfill_flow

    monkeypatch.setenv("METACLAW_REPLAY__PARTITION_FILES", "3")
    monkeypatch.setenv("METACLAW_REPLAY__CONCURRENCY", "2")
    monkeypatch.setenv("METACLAW_REPLAY__ALLOWED_ROOTS", json.dumps([str(tmp_path)]))
    logs = tmp_path / "history"
    shutil.copytree(REAL_V3, logs / "openclaw")
    shutil.copy(FIXTURES / "openai-chat.jsonl", logs / "chat.jsonl")

    state = backfill_flow(str(logs), return_state=True)
    result = state.result()
    assert result["partitions"] == 5  # 13 files, at most 3 per partition
    assert (result["files"], result["sessions"], result["turns"]) == (13, 16, 19)
    assert result["feedback"] == 3 and result["skipped"] == 5
    assert result["ledger_rows"] == 12 + 6 + 3, "the snapshot duplicate is dropped"
    assert set(result["downstream"]) == {"score", "diagnose", "evolve"}
    assert set(result["downstream"].values()) == {"completed"}
    paths = LedgerPaths(home)
    assert rows(paths, "SELECT count(*) AS n FROM turns") == [{"n": 18}]
    imports = [
        t
        for t in _task_runs(str(state.state_details.flow_run_id))
        if t.name.startswith("import-logs")
    ]
    assert len(imports) == 5 and all(t.state.is_completed() for t in imports)
    events = sorted([(t.start_time, 1) for t in imports] + [(t.end_time, -1) for t in imports])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak <= 2, "replay.concurrency bounds the partitions running at once"
    report = _artifact("backfill-report")[0].data
    assert "turns: **19**" in report and "rows landed in the ledger: **21**" in report
    skipped = _artifact("backfill-skipped")[0].data
    assert "chat.jsonl:9" in skipped and "invalid JSON" in skipped

    again = backfill_flow(str(logs))
    assert (again["files"], again["resumed"], again["turns"], again["ledger_rows"]) == (0, 13, 0, 0)
    assert rows(paths, "SELECT count(*) AS n FROM turns") == [{"n": 18}]


def test_backfill_flow_rejects_a_path_that_is_not_a_log(
    prefect_harness: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.backfill import backfill_flow

    secret = tmp_path / "elsewhere" / "id_rsa"
    secret.parent.mkdir()
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----")
    with pytest.raises(ValueError, match="outside the folders a backfill may read"):
        backfill_flow(str(secret))  # the flow parameter anyone with API access can set
    monkeypatch.setenv(
        "METACLAW_REPLAY__ALLOWED_ROOTS", json.dumps([str(tmp_path / "logs"), str(FIXTURES)])
    )
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "escape").symlink_to(secret.parent)
    with pytest.raises(ValueError, match="outside the folders"):
        backfill_flow(str(tmp_path / "logs" / "escape" / "id_rsa"))  # resolved, not followed
    junk = tmp_path / "logs" / "report.pdf"
    junk.write_bytes(b"%PDF-1.7 not a log")
    with pytest.raises(ValueError, match="not a conversation log"):
        backfill_flow(str(junk))
    with pytest.raises(ValueError, match="not a date or time"):
        backfill_flow(str(FIXTURES), since="last tuesday")
