"""Web pages cannot drive the proxy (issue 16, item 4): what a browser can send cross-site (a
`text/plain` or form POST, a request carrying a foreign Origin, a DNS-rebinding Host) is refused
before the upstream key is spent or a turn is written; and a proxy reachable from the network
needs keys unless that is explicitly allowed. Real HTTP against the proxy app served by uvicorn
in the test process (a proxy process costs its imports), and the CLI as a process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from metaclaw.config import ProxySettings, Settings, SkillsSettings, UpstreamSettings
from metaclaw.proxy.app import create_app
from metaclaw.proxy.guard import OpenBindError
from metaclaw.proxy.server import build_server
from tests.helpers import REPO, rows
from tests.served_app import ServedApp
from tests.stubs.upstream_server import StubUpstream

CHAT = "/v1/chat/completions"


def _body(marker: str) -> bytes:
    return b'{"model": "m", "messages": [{"role": "user", "content": "' + marker.encode() + b'"}]}'


class Proxy(ServedApp):
    def __init__(self, settings: Settings) -> None:
        super().__init__(create_app(settings))
        self.settings = settings

    def turns(self, marker: str) -> list[dict]:
        return rows(
            self.settings.paths,
            f"SELECT status FROM turns WHERE request::VARCHAR LIKE '%{marker}%'",
        )


def _settings(home: Path, stub: StubUpstream, **proxy: object) -> Settings:
    return Settings(
        home=home,
        upstream=UpstreamSettings(base_url=stub.base_url + "/v1"),
        proxy=ProxySettings(**proxy),
        skills=SkillsSettings(enabled=False),
    )


@pytest.fixture(scope="module")
def proxy(stub: StubUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    settings = _settings(
        tmp_path_factory.mktemp("guard") / "home",
        stub,
        allowed_hosts=["metaclaw.internal"],
        allowed_origins=["app://agent"],
    )
    with Proxy(settings) as served:
        yield served


def _nothing_happened(proxy: Proxy, stub: StubUpstream, marker: str) -> None:
    assert not [r for r in stub.requests() if marker in str(r["body"])], "upstream was called"
    assert proxy.turns(marker) == [], "a turn was recorded"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_a_post_a_page_can_send_without_preflight_gets_415(
    proxy: Proxy, stub: StubUpstream, content_type: str | None
) -> None:
    marker = uuid.uuid4().hex
    headers = {"content-type": content_type} if content_type else {}
    for path in (CHAT, "/v1/messages", "/v1/feedback"):
        resp = httpx.post(proxy.url + path, content=_body(marker), headers=headers)
        assert resp.status_code == 415, (path, resp.text)
        assert "Content-Type: application/json" in resp.json()["error"]["message"]
    _nothing_happened(proxy, stub, marker)


def test_a_foreign_origin_gets_403_and_the_same_origin_is_served(
    proxy: Proxy, stub: StubUpstream
) -> None:
    marker = uuid.uuid4().hex
    for origin in ("https://evil.example", "null", "http://localhost:9999"):
        resp = httpx.post(
            proxy.url + CHAT,
            content=_body(marker),
            headers={"content-type": "application/json", "origin": origin},
        )
        assert resp.status_code == 403, (origin, resp.text)
        assert resp.json()["error"]["code"] == "origin_not_allowed"
    _nothing_happened(proxy, stub, marker)
    for origin in (proxy.url, "app://agent"):  # its own; one in proxy.allowed_origins
        allowed = httpx.post(
            proxy.url + CHAT,
            content=_body("same origin"),
            headers={"content-type": "application/json", "origin": origin},
        )
        assert allowed.status_code == 200, (origin, allowed.text)


def test_a_dns_rebinding_host_gets_403_even_for_reads(proxy: Proxy, stub: StubUpstream) -> None:
    marker = uuid.uuid4().hex
    rebound = {"host": f"attacker.example:{proxy.port}"}
    reads = httpx.get(proxy.url + "/v1/models", headers=rebound)
    assert reads.status_code == 403 and "DNS-rebinding" in reads.json()["error"]["message"]
    write = httpx.post(
        proxy.url + CHAT,
        content=_body(marker),
        headers={**rebound, "content-type": "application/json"},
    )
    assert write.status_code == 403
    _nothing_happened(proxy, stub, marker)
    for host in (f"localhost:{proxy.port}", f"127.0.0.1:{proxy.port}"):
        assert httpx.get(proxy.url + "/v1/models", headers={"host": host}).status_code == 200


def test_a_listed_host_name_is_accepted(proxy: Proxy) -> None:
    named = httpx.get(proxy.url + "/v1/models", headers={"host": "metaclaw.internal:1"})
    assert named.status_code == 200, "a name listed in proxy.allowed_hosts is accepted"
    assert (
        httpx.get(proxy.url + "/v1/models", headers={"host": "other.internal"}).status_code == 403
    )


def test_an_open_bind_without_keys_is_refused_unless_allowed(
    stub: StubUpstream, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "METACLAW_HOME": str(tmp_path / "home"),
        "METACLAW_CONFIG": str(tmp_path / "none.toml"),
    }
    refused = subprocess.run(
        [sys.executable, "-m", "metaclaw", "proxy", "--host", "0.0.0.0"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2, refused.stderr
    message = " ".join(refused.stderr.split())  # the console wraps long lines
    assert "refusing to listen on 0.0.0.0 without proxy.api_keys" in message
    assert "proxy.allow_open_bind" in message
    home = tmp_path / "home"
    with pytest.raises(OpenBindError):
        build_server(_settings(home, stub), host="::")
    assert (
        build_server(_settings(home, stub, api_keys=["k"]), host="0.0.0.0").config.host == "0.0.0.0"
    )
    assert (
        build_server(_settings(home, stub, allow_open_bind=True), host="0.0.0.0").config.host
        == "0.0.0.0"
    )
    assert build_server(_settings(home, stub), host="127.0.0.1").config.host == "127.0.0.1"
