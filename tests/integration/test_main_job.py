"""`metaclaw up` as a user runs it: a subprocess with the Prefect server, the proxy and every
deployment; a chat lands in the ledger through the scheduled ingest; the Prefect UI (headless
Chromium from Debian's package, driven by Selenium) shows the completed run and its artifact;
Ctrl-C stops everything with no orphans."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from metaclaw.config import LedgerPaths
from tests.helpers import REPO, free_port, rows
from tests.stubs.upstream_server import StubUpstream

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@dataclass
class MainJob:
    proc: subprocess.Popen[str]
    proxy: str
    prefect: str
    paths: LedgerPaths

    def api(self, path: str, body: dict[str, Any]) -> Any:
        """POST to the Prefect API as Prefect's own client does: `up` runs the server with CSRF
        protection on, so a write first fetches a token for this client id."""
        client = uuid.uuid4().hex
        token = httpx.get(f"{self.prefect}/api/csrf-token", params={"client": client}).json()
        headers = {"Prefect-Csrf-Token": token["token"], "Prefect-Csrf-Client": client}
        resp = httpx.post(f"{self.prefect}/api{path}", json=body, headers=headers)
        resp.raise_for_status()
        return resp.json()


def _wait(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} never became healthy")


@pytest.fixture(scope="module")
def main_job(stub: StubUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MainJob]:
    home = tmp_path_factory.mktemp("up") / "home"
    proxy_port, prefect_port = free_port(), free_port()
    env = {
        **os.environ,
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(home.parent / "none.toml"),
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_FLOWS__INGEST_INTERVAL_S": "5",
        "METACLAW_LEDGER__WAL_ROTATE_S": "0.5",
    }
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metaclaw",
            "up",
            "--proxy-port",
            str(proxy_port),
            "--prefect-port",
            str(prefect_port),
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    job = MainJob(
        proc,
        f"http://127.0.0.1:{proxy_port}",
        f"http://127.0.0.1:{prefect_port}",
        LedgerPaths(home),
    )
    try:
        _wait(job.proxy + "/healthz", time.monotonic() + 180)
        yield job
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise


def _completed_ingest_run(job: MainJob, deadline: float) -> tuple[dict, dict]:
    """A completed ingest flow run and its artifact."""
    body = {
        "flows": {"name": {"any_": ["ingest"]}},
        "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
        "sort": "START_TIME_DESC",
    }
    while time.monotonic() < deadline:
        runs = job.api("/flow_runs/filter", body)
        for run in runs:
            arts = job.api(
                "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
            )
            if arts:
                return run, arts[0]
        time.sleep(2)
    raise AssertionError("no completed ingest run with an artifact")


def test_chat_lands_through_scheduled_ingest(main_job: MainJob) -> None:
    client = openai.OpenAI(base_url=main_job.proxy + "/v1", api_key="k", max_retries=0)
    reply = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hello up"}]
    )
    assert reply.choices[0].message.content == "Echo: hello up"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and "turns" not in (
        main_job.paths.manifest.read_text() if main_job.paths.manifest.exists() else ""
    ):
        time.sleep(1)  # the scheduled ingest run lands the turn as Parquet
    assert rows(main_job.paths, "SELECT completion_text FROM turns") == [
        {"completion_text": "Echo: hello up"}
    ]
    flows = main_job.api("/flows/filter", {})
    assert {"ingest", "score"} <= {f["name"] for f in flows}
    deployments = main_job.api("/deployments/filter", {})
    assert {"ingest", "score", "train", "pipeline"} <= {d["name"] for d in deployments}
    limits = main_job.api("/v2/concurrency_limits/filter", {})
    assert {"metaclaw-training", "metaclaw-skills-writer"} <= {c["name"] for c in limits}


@pytest.mark.skipif(
    not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
    reason="Debian's chromium and chromium-driver are not installed "
    "(scripts/setup.sh installs them)",
)
def test_prefect_ui_shows_the_run_and_its_artifact(main_job: MainJob, tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    run, artifact = _completed_ingest_run(main_job, time.monotonic() + 180)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chrome'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        wait = WebDriverWait(driver, 90)
        driver.get(f"{main_job.prefect}/runs/flow-run/{run['id']}")
        # the page fills in piece by piece (the run's name first, its flow and state after)
        shown = (run["name"], "ingest", "Completed")
        try:
            wait.until(lambda d: all(s in d.find_element("tag name", "body").text for s in shown))
        except TimeoutException:
            body = driver.find_element("tag name", "body").text
            raise AssertionError(f"the run page never showed all of {shown}: {body!r}") from None
        driver.get(f"{main_job.prefect}/artifacts/artifact/{artifact['id']}")
        wait.until(lambda d: "rows landed" in d.find_element("tag name", "body").text)
        assert "Ingest" in driver.find_element("tag name", "body").text
        driver.save_screenshot(str(tmp_path / "artifact.png"))
    finally:
        driver.quit()


def test_ctrl_c_stops_everything(main_job: MainJob) -> None:
    """Runs last in this module: SIGINT, then every child is gone and the ports are free."""
    os.killpg(main_job.proc.pid, signal.SIGINT)
    out, _ = main_job.proc.communicate(timeout=90)
    assert main_job.proc.returncode == 0, out
    assert "Prefect UI" in out and "stopped" in out
    for url in (main_job.proxy, main_job.prefect):
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/", timeout=2)
    assert _processes_with_home(main_job.paths.home) == [], "no orphan processes"


def _processes_with_home(home: Path) -> list[int]:
    """PIDs whose environment names this METACLAW_HOME (every child of `up` inherits it)."""
    marker = f"METACLAW_HOME={home}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_chromium_is_installed_in_ci() -> None:
    """CI must really run the browser test, not skip it."""
    if os.environ.get("CI") == "true":
        assert shutil.which("chromium") and shutil.which("chromedriver")
