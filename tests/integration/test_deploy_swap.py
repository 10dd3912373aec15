"""Promotion and rollback against a real policy server process (tiny model + LoRA adapters):
the server swaps at once, under concurrent load, with zero failed requests; a server started
later serves whatever the ledger says is promoted; the CLI drives the same path."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch

from metaclaw.config import LedgerPaths, Settings
from metaclaw.deploy import deployer
from metaclaw.deploy.notify import notify_policy_server
from metaclaw.deploy.reconcile import reconcile
from metaclaw.deploy.store import read_book
from metaclaw.serving.launch import start_policy_server
from metaclaw.supervisor import Child
from tests.deploy_helpers import add_candidates, candidate_row, deploy_settings, train_toward
from tests.helpers import REPO, free_port
from tests.tiny_model import save_tiny_model

torch.set_num_threads(1)
# trains LoRA checkpoints (and starts processes) once per module: ~15-25 s
pytestmark = pytest.mark.slow
BODY = {
    "model": "policy",
    "max_tokens": 6,
    "temperature": 0,
    "messages": [{"role": "user", "content": "Question 1: tell me something."}],
}


@dataclass
class Served:
    started: float
    ended: float
    checkpoint: str | None
    error: str | None = None


@dataclass
class Env:
    settings: Settings
    child: Child
    url: str

    @property
    def paths(self) -> LedgerPaths:
        return self.settings.paths


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("swap")
    tiny = save_tiny_model(root / "model")
    home = root / "home"
    port = free_port()
    settings = deploy_settings(home, tiny, None, port)
    add_candidates(
        settings.paths,
        candidate_row("ckpt-good", train_toward(tiny, root / "c", "good", "Paris"), 1),
        candidate_row("ckpt-blue", train_toward(tiny, root / "c", "blue", "blue"), 2),
    )
    # promoted while no server runs: recorded all the same, picked up at the server's start
    early = deployer.promote(settings, "ckpt-blue", actor="test", reason="before start")
    assert early.notice is not None and early.notice.status == "unreachable"
    server_env = {
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(root / "none.toml"),
        "METACLAW_POLICY__MODEL": str(tiny),
        "METACLAW_POLICY__TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    child = start_policy_server(settings.paths, port, env=server_env, timeout_s=180)
    try:
        yield Env(settings, child, f"http://127.0.0.1:{port}")
    finally:
        child.stop()


def serving(env: Env) -> str | None:
    return httpx.get(env.url + "/healthz", timeout=10).json()["checkpoint"]


async def load(env: Env, stop: asyncio.Event, workers: int = 6) -> list[Served]:
    out: list[Served] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                resp = await client.post("/v1/chat/completions", json=BODY)
                body = resp.json()
                if resp.status_code != 200:
                    out.append(Served(started, time.monotonic(), None, f"{resp.status_code}"))
                    continue
                out.append(Served(started, time.monotonic(), body["metaclaw"]["checkpoint"]))
            except httpx.HTTPError as exc:
                out.append(Served(started, time.monotonic(), None, repr(exc)))

    async with httpx.AsyncClient(base_url=env.url, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(workers)))
    return out


def test_a_server_started_later_serves_the_promoted_checkpoint(env: Env) -> None:
    assert serving(env) == "ckpt-blue"


def test_promote_and_rollback_swap_under_load_with_no_failed_request(env: Env) -> None:
    async def scenario() -> tuple[list[Served], list[tuple[str | None, float, float]]]:
        stop = asyncio.Event()
        task = asyncio.create_task(load(env, stop))
        swaps: list[tuple[str | None, float, float]] = []  # (now serving, asked at, answered)

        async def act(fn, *args, **kw):  # type: ignore[no-untyped-def]
            await asyncio.sleep(0.6)
            asked = time.monotonic()
            change = await asyncio.to_thread(fn, env.settings, *args, **kw)
            assert change.notice is not None and change.notice.status == "swapped", change
            swaps.append(
                (
                    change.checkpoint_id if change.action == "promoted" else change.restored,
                    asked,
                    time.monotonic(),
                )
            )

        await act(deployer.promote, "ckpt-good", actor="test", reason="gate said so")
        await act(deployer.promote, "ckpt-blue", actor="test", reason="again", force=False)
        await act(deployer.rollback, actor="test", reason="blue is bad")  # → ckpt-good
        await act(deployer.rollback, actor="test", reason="good is bad too")  # → base model
        await asyncio.sleep(0.6)
        stop.set()
        return await task, swaps

    served, swaps = asyncio.run(scenario())
    failed = [s for s in served if s.error]
    assert failed == [] and len(served) > 40
    assert [s[0] for s in swaps] == ["ckpt-good", "ckpt-blue", "ckpt-good", None]
    for i, (ckpt, _, answered) in enumerate(swaps):
        # every request sent after the swap was answered, until the next one, runs on it
        until = swaps[i + 1][1] if i + 1 < len(swaps) else float("inf")
        after = [s for s in served if answered <= s.started and s.ended < until]
        assert after and {s.checkpoint for s in after} == {ckpt}, (ckpt, after[:3])
    assert serving(env) is None


def test_the_cli_lists_promotes_and_rolls_back_a_running_server(env: Env) -> None:
    cli_env = {
        **os.environ,
        "METACLAW_HOME": str(env.settings.home),
        "METACLAW_CONFIG": str(env.settings.home / "none.toml"),
        "METACLAW_POLICY__PORT": str(env.settings.policy.port),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "metaclaw", "checkpoints", *args],
            env=cli_env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )

    good = next(
        c for c in read_book(env.paths).checkpoints.values() if c.checkpoint_id == "ckpt-good"
    )
    add_candidates(env.paths, candidate_row("ckpt-cli", good.path or "", 3))
    before = serving(env)
    done = cli("promote", "ckpt-cli", "--reason", "ops decision")
    assert done.returncode == 0, done.stderr
    assert "promoted ckpt-cli" in done.stdout and "swapped" in done.stdout
    assert serving(env) == "ckpt-cli"
    listed = json.loads(cli("list", "--json").stdout)
    by_id = {r["checkpoint_id"]: r for r in listed}
    assert (
        by_id["ckpt-cli"]["status"] == "promoted"
        and by_id["ckpt-cli"]["reason"] == "ops decision"
        and by_id["ckpt-cli"]["actor"].startswith("cli")
    )
    back = cli("rollback")
    assert back.returncode == 0 and "now serving" in back.stdout, back.stderr
    assert serving(env) == before
    refused = cli("promote", "ckpt-cli")  # rolled back: needs --force
    assert refused.returncode == 1 and "--force" in refused.stderr
    missing = cli("promote", "ckpt-nope")
    assert missing.returncode == 1 and "no checkpoint 'ckpt-nope'" in missing.stderr
    forced = cli("promote", "ckpt-cli", "--force")
    assert forced.returncode == 0 and serving(env) == "ckpt-cli"


def test_a_server_that_drifted_from_the_ledger_is_swapped_back_by_the_deploy_flow(
    env: Env, prefect_harness: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.deploy import deploy_flow

    book = read_book(env.paths)
    promoted = book.promoted
    assert promoted is not None and serving(env) == promoted.checkpoint_id
    # the server serves other weights than the ledger names (what a refused or lost swap leaves)
    other = book.get("ckpt-blue")
    assert notify_policy_server(env.settings, "ckpt-blue", other.path).status == "swapped"
    assert serving(env) == "ckpt-blue"
    for key, value in {
        "HOME": str(env.settings.home),
        "CONFIG": str(env.settings.home / "none.toml"),
        "POLICY__PORT": str(env.settings.policy.port),
    }.items():
        monkeypatch.setenv(f"METACLAW_{key}", value)

    result = deploy_flow()

    assert result["reconciliation"]["status"] == "resent", result
    assert serving(env) == promoted.checkpoint_id  # swapped back without a restart

    async def artifact() -> str:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=["policy-server-reconcile"])
                )
            )
        return str(sorted(found, key=lambda a: a.created)[-1].data)

    report = asyncio.run(artifact())
    assert "**resent**" in report and f"`{promoted.checkpoint_id}`" in report
    assert "`ckpt-blue`" in report
    assert reconcile(env.settings).status == "in_sync"


def test_a_refused_swap_is_reported_until_the_ledger_and_server_agree(
    env: Env, tmp_path: Path
) -> None:
    from tests.tiny_model import build_tiny_model

    # finite LoRA weights, so the registry accepts it, but for a model of another width: the
    # server refuses to load it
    model, tok = build_tiny_model(hidden=32)
    other_model = tmp_path / "other-model"
    model.save_pretrained(other_model)
    tok.save_pretrained(other_model)
    alien = train_toward(other_model, tmp_path / "c", "alien", "Paris", steps=1)
    add_candidates(env.paths, candidate_row("ckpt-alien", alien, 9))
    before = serving(env)
    change = deployer.promote(env.settings, "ckpt-alien", actor="test", reason="by hand")
    assert change.notice is not None and change.notice.status == "refused"
    assert serving(env) == before and read_book(env.paths).promoted.checkpoint_id == "ckpt-alien"

    found = reconcile(env.settings)

    assert (found.status, found.expected, found.served) == ("mismatch", "ckpt-alien", before)
    assert found.problem and "different base model" in found.detail
    assert serving(env) == before
    back = deployer.rollback(env.settings, actor="test", reason="the server cannot load it")
    assert back.notice is not None and back.notice.status == "swapped"
    assert reconcile(env.settings).status == "in_sync"
