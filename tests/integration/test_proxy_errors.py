"""Bad input and bad upstreams: each gets a clear, shaped error, and the proxy keeps serving."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

from tests.helpers import ProxyProcess, free_port
from tests.stubs.upstream_server import StubUpstream

CHAT = "/v1/chat/completions"


def _assert_openai_error(resp: httpx.Response, status: int, needle: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    assert {"message", "type", "code"} <= set(body["error"])
    assert needle in body["error"]["message"], body
    return body["error"]


def _still_serving(proxy: ProxyProcess) -> None:
    resp = httpx.post(
        proxy.url + CHAT,
        json={"model": "m", "messages": [{"role": "user", "content": "still there?"}]},
        timeout=10,
    )
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("content", "status", "needle"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"model": "m"}', 400, "'messages' is required"),
        (b'{"model": "m", "messages": []}', 400, "non-empty array"),
        (b'{"model": "m", "messages": "hi"}', 400, "non-empty array"),
        (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', 400, "'model' must"),
        (b'{"messages": [{"role": "user", "content": "x"}]}', 400, "'model' is required"),
        (b'{"model": "m", "messages": [{"role": "wizard", "content": "x"}]}', 400, "role"),
        (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', 400, "content"),
        (b'{"model": "m", "stream": "yes", "messages": [{"role": "user"}]}', 400, "'stream'"),
        (b'{"model": "m", "max_tokens": "9", "messages": [{"role": "user"}]}', 400, "max_tokens"),
    ],
)
def test_malformed_requests_get_400(
    proxy: ProxyProcess, content: bytes, status: int, needle: str
) -> None:
    resp = httpx.post(
        proxy.url + CHAT, content=content, headers={"content-type": "application/json"}
    )
    _assert_openai_error(resp, status, needle)
    _still_serving(proxy)


def test_body_over_limit_gets_413_before_being_read(stub: StubUpstream, tmp_path: Path) -> None:
    env = {
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_PROXY__MAX_BODY_BYTES": "1000",
    }
    with ProxyProcess(tmp_path / "h", env) as proxy:
        big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]})
        json_type = {"content-type": "application/json"}
        _assert_openai_error(
            httpx.post(proxy.url + CHAT, content=big, headers=json_type), 413, "max_body_bytes"
        )

        def chunked() -> Iterator[bytes]:  # no content-length: counted while streaming in
            for _ in range(50):
                yield b" " * 100

        _assert_openai_error(
            httpx.post(proxy.url + CHAT, content=chunked(), headers=json_type), 413, "max_body"
        )
        resp = httpx.post(proxy.url + "/v1/messages", content=big, headers=json_type)
        assert resp.status_code == 413
        assert resp.json()["type"] == "error"
        assert resp.json()["error"]["type"] == "request_too_large"
        _still_serving(proxy)


def test_unknown_route_and_method_are_shaped(proxy: ProxyProcess) -> None:
    _assert_openai_error(httpx.get(proxy.url + "/v1/nope"), 404, "no route")
    _assert_openai_error(httpx.get(proxy.url + CHAT), 405, "not allowed")


def test_auth_on(stub: StubUpstream, tmp_path: Path) -> None:
    env = {
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_UPSTREAM__API_KEY": "upstream-secret",
        "METACLAW_PROXY__API_KEYS": "key-a, key-b",
    }
    with ProxyProcess(tmp_path / "h", env) as proxy:
        msgs = [{"role": "user", "content": f"auth {uuid.uuid4().hex}"}]
        for key in ("wrong", None):
            headers = {"authorization": f"Bearer {key}"} if key else {}
            err = _assert_openai_error(
                httpx.post(
                    proxy.url + CHAT, json={"model": "m", "messages": msgs}, headers=headers
                ),
                401,
                "API key",
            )
            assert err["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(
                base_url=proxy.url + "/v1", api_key="wrong", max_retries=0
            ).chat.completions.create(model="m", messages=msgs)
        ok = openai.OpenAI(base_url=proxy.url + "/v1", api_key="key-b", max_retries=0)
        assert ok.chat.completions.create(model="m", messages=msgs).choices[0].message.content
        sent = stub.requests()[-1]
        assert sent["headers"]["authorization"] == "Bearer upstream-secret", (
            "the client's proxy key must not leak upstream"
        )

        with pytest.raises(anthropic.AuthenticationError) as info:
            anthropic.Anthropic(base_url=proxy.url, api_key="wrong", max_retries=0).messages.create(
                model="c", max_tokens=10, messages=[{"role": "user", "content": "x"}]
            )
        assert info.value.body["error"]["type"] == "authentication_error"
        good = anthropic.Anthropic(base_url=proxy.url, api_key="key-a", max_retries=0)
        assert good.messages.create(
            model="c", max_tokens=10, messages=[{"role": "user", "content": "x"}]
        ).content
        assert httpx.get(proxy.url + "/healthz").status_code == 200, "healthz needs no auth"
        assert "upstream-secret" not in (proxy.home / "proxy-test.log").read_text()


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_5xx_is_passed_through_and_recorded(proxy: ProxyProcess, stream: bool) -> None:
    marker = uuid.uuid4().hex
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(
            model="m",
            stream=stream,
            messages=[{"role": "user", "content": f"{marker} [[error:503]]"}],
        )
    assert info.value.status_code == 503
    assert "stub injected error 503" in str(info.value)
    turn = proxy.turns(f"request::VARCHAR LIKE '%{marker}%'")[0]
    assert turn["status"] == "upstream_error" and turn["http_status"] == 503
    assert "stub injected error 503" in turn["error"]
    _still_serving(proxy)


def test_upstream_garbage_is_a_502(proxy: ProxyProcess) -> None:
    marker = uuid.uuid4().hex
    resp = httpx.post(
        proxy.url + CHAT,
        json={"model": "m", "messages": [{"role": "user", "content": f"{marker} [[garbage]]"}]},
    )
    _assert_openai_error(resp, 502, "non-JSON")
    assert proxy.turns(f"request::VARCHAR LIKE '%{marker}%'")[0]["status"] == "upstream_error"


def test_upstream_drop_mid_stream_is_recorded(proxy: ProxyProcess) -> None:
    marker = uuid.uuid4().hex
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
    with pytest.raises(openai.APIError):
        list(
            client.chat.completions.create(
                model="m",
                stream=True,
                messages=[{"role": "user", "content": f"{marker} [[drop]] [[words:50]]"}],
            )
        )
    turn = proxy.turns(f"request::VARCHAR LIKE '%{marker}%'")[0]
    assert turn["status"] == "upstream_error"
    assert "stream" in turn["error"]
    _still_serving(proxy)


def test_upstream_timeout(stub: StubUpstream, tmp_path: Path) -> None:
    env = {
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_UPSTREAM__TIMEOUT_S": "0.5",
    }
    with ProxyProcess(tmp_path / "h", env) as proxy:
        resp = httpx.post(
            proxy.url + CHAT,
            json={"model": "m", "messages": [{"role": "user", "content": "slow [[delay:2]]"}]},
            timeout=10,
        )
        err = _assert_openai_error(resp, 504, "timed out")
        assert err["code"] == "upstream_timeout"
        turn = proxy.turns()[0]
        assert turn["status"] == "upstream_error" and turn["http_status"] == 504
        _still_serving(proxy)


def test_upstream_refusing_connections(tmp_path: Path) -> None:
    env = {"METACLAW_UPSTREAM__BASE_URL": f"http://127.0.0.1:{free_port()}/v1"}
    with ProxyProcess(tmp_path / "h", env) as proxy:
        for path, anthropic_shape in ((CHAT, False), ("/v1/messages", True)):
            resp = httpx.post(
                proxy.url + path,
                json={
                    "model": "m",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            )
            assert resp.status_code == 502
            body = resp.json()
            if anthropic_shape:
                assert body["type"] == "error" and "unreachable" in body["error"]["message"]
            else:
                assert body["error"]["code"] == "upstream_unavailable"
        assert [t["status"] for t in proxy.turns()] == ["upstream_error", "upstream_error"]
        assert proxy.health()["status"] == "ok"


def test_no_upstream_and_no_policy_server_says_what_to_do(tmp_path: Path) -> None:
    with ProxyProcess(tmp_path / "h", {"METACLAW_POLICY__PORT": str(free_port())}) as proxy:
        assert proxy.health()["upstream"]["local_policy_default"] is True
        resp = httpx.post(
            proxy.url + CHAT, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        )
        err = _assert_openai_error(resp, 503, "METACLAW_UPSTREAM__BASE_URL")
        assert err["code"] == "no_upstream" and "metaclaw up" in err["message"]
