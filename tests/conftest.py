"""Shared fixtures: real processes (stub upstream, proxy), ledger homes, the Prefect harness."""

from __future__ import annotations

import os

# Before anything imports Prefect: no telemetry, no hub, state in a temp home.
os.environ.update(
    {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LANCEDB_LOG": "error",
        # No test may reach for a local policy server it did not start: with nothing configured,
        # judge and critic are off (tests of the embedded default turn them on explicitly).
        "METACLAW_JUDGE__LOCAL_DEFAULT": "false",
        "METACLAW_CRITIC__LOCAL_DEFAULT": "false",
    }
)

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ProxyProcess
from tests.stubs.upstream_server import StubUpstream


@pytest.fixture(scope="session")
def stub() -> Iterator[StubUpstream]:
    with StubUpstream() as upstream:
        yield upstream


@pytest.fixture(scope="module")
def proxy(stub: StubUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """A proxy in front of the stub, no auth; one per test module."""
    home = tmp_path_factory.mktemp("proxy-home")
    with ProxyProcess(home, {"METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1"}) as proc:
        yield proc


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One Prefect test server per session (≈10 s); yields its API URL."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session")
def s3_server() -> Iterator[object]:
    """moto's S3 API as a real process on 127.0.0.1 (tests/stubs/s3_server.py); one per session."""
    from tests.stubs.s3_server import StubS3

    with StubS3() as server:
        yield server


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh METACLAW_HOME for code that builds `Settings()` in this process."""
    data = tmp_path / "home"
    monkeypatch.setenv("METACLAW_HOME", str(data))
    monkeypatch.setenv("METACLAW_CONFIG", str(tmp_path / "metaclaw.toml"))
    return data
