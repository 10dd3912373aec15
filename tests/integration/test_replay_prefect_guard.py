"""The Prefect server `metaclaw up` starts refuses cross-origin flow-run creation (CORS limited to
its own origin, CSRF protection on), while Prefect's own client keeps working."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from metaclaw.config import LedgerPaths
from metaclaw.supervisor import start_prefect_server
from tests.helpers import free_port


@pytest.mark.slow  # starts a real Prefect server (≈20–100 s on the shared CI box)
def test_a_cross_origin_flow_run_creation_is_refused(tmp_path: Path) -> None:
    from prefect.client.orchestration import PrefectClient

    paths = LedgerPaths(tmp_path / "home")
    paths.logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server = start_prefect_server(paths, port, timeout=300)  # a loaded CI box: ~100 s
    try:

        async def legit() -> str:
            async with PrefectClient(api) as client:  # fetches and sends a CSRF token
                flow_id = await client.create_flow_from_name("guard-test")
                return str(flow_id)

        flow_id = asyncio.run(legit())
        body = f'{{"flow_id": "{flow_id}", "name": "from-a-web-page"}}'
        evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
        forged = httpx.post(f"{api}/flow_runs/", content=body, headers=evil, timeout=30)
        assert forged.status_code == 403, forged.text
        preflight = httpx.options(
            f"{api}/flow_runs/",
            timeout=30,
            headers={
                "Origin": "http://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.headers.get("access-control-allow-origin") != "http://evil.example"
        assert preflight.headers.get("access-control-allow-origin") != "*"

        async def runs() -> list:
            async with PrefectClient(api) as client:
                return await client.read_flow_runs()

        assert asyncio.run(runs()) == [], "nothing was started"
    finally:
        server.stop()
