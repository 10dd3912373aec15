"""The browser-origin rules of `metaclaw.proxy.guard` as pure functions (issue 16, item 4)."""

from __future__ import annotations

import pytest

from metaclaw.proxy.guard import OpenBindError, check_bind, check_request, host_allowed


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:30000",
        "localhost",
        "LOCALHOST.:8",
        "[::1]:30000",
        "10.0.0.5",
        "[fe80::1]",
        "api.localhost:1",
        "gw.internal",
    ],
)
def test_addresses_localhost_and_listed_names_are_this_server(host: str) -> None:
    assert host_allowed(host, ["gw.internal"])


@pytest.mark.parametrize(
    "host", ["attacker.example:30000", "127.0.0.1.nip.io", "", "[::1", "localhost.attacker.example"]
)
def test_other_names_are_rebinding_suspects(host: str) -> None:
    assert not host_allowed(host, ["gw.internal"])


def _check(method: str = "POST", **headers: str) -> int | None:
    raw = {k.replace("_", "-").encode(): v.encode() for k, v in headers.items()}
    refusal = check_request(method, "http", raw, [], ["app://agent"])
    return refusal.status if refusal else None


def test_request_rules() -> None:
    json_type = {"content_type": "application/json; charset=utf-8", "host": "127.0.0.1:9"}
    assert _check(**json_type) is None
    assert _check(**{**json_type, "content_type": "application/vnd.api+json"}) is None
    assert _check(**{**json_type, "content_type": "text/plain"}) == 415
    assert _check(host="127.0.0.1:9") == 415  # a body with no type at all
    assert _check("GET", host="127.0.0.1:9") is None  # reads carry no body
    assert _check(**json_type, origin="http://127.0.0.1:9") is None
    assert _check(**json_type, origin="app://agent/") is None
    assert _check(**json_type, origin="https://127.0.0.1:9") == 403  # another scheme
    assert _check(**json_type, origin="http://127.0.0.1:10") == 403  # another port
    assert _check(**json_type, origin="null") == 403
    assert _check(**{**json_type, "host": "evil.example"}) == 403


def test_bind_rules() -> None:
    for host in ("127.0.0.1", "::1", "localhost"):
        check_bind(host, keyed=False, allow_open=False, section="proxy", key_setting="k")
    check_bind("0.0.0.0", keyed=True, allow_open=False, section="proxy", key_setting="k")
    check_bind("0.0.0.0", keyed=False, allow_open=True, section="proxy", key_setting="k")
    with pytest.raises(OpenBindError, match=r"proxy\.allow_open_bind"):
        check_bind(
            "192.168.1.4",
            keyed=False,
            allow_open=False,
            section="proxy",
            key_setting="proxy.api_keys",
        )
