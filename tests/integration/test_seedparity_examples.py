"""The three documented uses in examples/ run against the embedded defaults and the stubs:
converse through the proxy (openai SDK), replay a log folder (backfill), trigger a flow."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.helpers import ProxyProcess, rows

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
LOGS = REPO / "tests" / "fixtures" / "replay"


def _env(home: Path, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METACLAW_")}
    return {
        **clean,
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(home / "none.toml"),
        **extra,
    }


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converse_example_through_the_proxy(proxy: ProxyProcess, tmp_path: Path) -> None:
    before = len(proxy.turns())
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "converse.py"), "first question", "second question"],
        cwd=tmp_path,
        env=_env(tmp_path, METACLAW_PROXY__PORT=str(proxy.port)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("assistant: ") == 2 and "2 turns captured" in out.stdout
    proxy.health()  # the proxy is still serving
    deadline_turns = proxy.turns()[before:]
    assert len(deadline_turns) == 2, "both turns captured durably before the replies ended"
    assert len({t["session_id"] for t in deadline_turns}) == 1, "one conversation, one session"


def test_backfill_then_run_flow_examples(prefect_harness: str, home: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "backfill.py"), str(LOGS)],
        cwd=REPO,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    imported = int(out.stdout.split("imported ")[1].split(" turns")[0])
    in_ledger = int(out.stdout.rsplit("in the ledger: ", 1)[1])
    assert imported > 0 and 0 < in_ledger <= imported, out.stdout
    again = subprocess.run(
        [sys.executable, str(EXAMPLES / "backfill.py"), str(LOGS)],
        cwd=REPO,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0 and "imported 0 turns" in again.stdout, again.stdout
    assert again.stdout.endswith(f"in the ledger: {in_ledger}\n"), "nothing added twice"

    from metaclaw.config import LedgerPaths

    counted = rows(
        LedgerPaths(home), "SELECT count(*) AS n FROM turns WHERE source LIKE 'backfill:%'"
    )
    assert counted[0]["n"] == in_ledger

    # the importer landed everything in Parquet: the triggered ingest finds nothing to add
    runs_before = _completed_runs("ingest")
    result = _load("run_flow").run_flow("ingest")  # on demand, on the session's Prefect server
    assert result["total_rows"] == 0 and result["segments"] == 0, result
    assert _completed_runs("ingest") == runs_before + 1, "the run is recorded by Prefect"


def _completed_runs(flow_name: str) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        return len(
            client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                flow_run_filter=FlowRunFilter(
                    state=dict(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))
                ),
            )
        )
