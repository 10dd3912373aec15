"""`POST /v1/feedback` on a real proxy process: stored durably, tied to the right turn,
validated with OpenAI-shaped 4xx errors, behind the proxy's auth."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import ProxyProcess, rows
from tests.stubs.upstream_server import StubUpstream


def _chat(
    proxy: ProxyProcess, session: str, text: str, headers: dict[str, str] | None = None
) -> None:
    resp = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        timeout=10,
        headers={"X-Session-Id": session, **(headers or {})},
        json={"model": "m", "messages": [{"role": "user", "content": text}]},
    )
    assert resp.status_code == 200, resp.text


def _post(proxy: ProxyProcess, body: Any, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{proxy.url}/v1/feedback", json=body, headers=headers or {}, timeout=10)


def test_session_feedback_lands_on_the_latest_turn(proxy: ProxyProcess) -> None:
    session = f"fb-{uuid.uuid4().hex[:8]}"
    _chat(proxy, session, "first question")
    _chat(proxy, session, "second question")
    resp = _post(proxy, {"session_id": session, "value": -1, "comment": "wrong answer"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["object"] == "feedback" and body["session_id"] == session
    assert body["value"] == -1.0 and body["turn_id"] is None and body["comment"] == "wrong answer"
    stored = rows(proxy.paths, f"SELECT * FROM feedback WHERE feedback_id = '{body['id']}'")
    assert len(stored) == 1 and stored[0]["value"] == -1.0  # durable before the 201
    latest = proxy.turns(f"session_id = '{session}'")[-1]["turn_id"]
    resolved = rows(
        proxy.paths, f"SELECT turn_id FROM turn_feedback WHERE feedback_id = '{body['id']}'"
    )
    assert resolved == [{"turn_id": latest}]
    reward = rows(
        proxy.paths, f"SELECT reward, reward_source FROM turn_rewards WHERE turn_id = '{latest}'"
    )
    assert reward == [{"reward": -1.0, "reward_source": "explicit"}]


def test_turn_feedback_and_idempotency_key(proxy: ProxyProcess) -> None:
    session = f"fb-{uuid.uuid4().hex[:8]}"
    _chat(proxy, session, "a question")
    turn_id = proxy.turns(f"session_id = '{session}'")[0]["turn_id"]
    key = {"Idempotency-Key": uuid.uuid4().hex}
    first = _post(proxy, {"turn_id": turn_id, "value": 0.5}, key)
    again = _post(proxy, {"turn_id": turn_id, "value": 0.5}, key)
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    stored = rows(proxy.paths, f"SELECT count(*) AS n FROM feedback WHERE turn_id = '{turn_id}'")
    assert stored == [{"n": 1}]
    # a turn id with its (right) session is fine; with another session it is refused
    assert _post(proxy, {"turn_id": turn_id, "session_id": session, "value": 1}).status_code == 201
    wrong = _post(proxy, {"turn_id": turn_id, "session_id": "other", "value": 1})
    assert wrong.status_code == 404 and "belongs to session" in wrong.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"turn_id": "t", "value": 2}, 400, "value"),
        ({"turn_id": "t", "value": -1.01}, 400, "value"),
        ({"turn_id": "t", "value": "good"}, 400, "value"),
        ({"value": 1}, 400, "turn_id"),
        ({"turn_id": 12, "value": 1}, 400, "turn_id"),
        ({"turn_id": "", "value": 1}, 400, "turn_id"),
        ({"turn_id": "t", "value": 1, "stars": 5}, 400, "stars"),
        ({"turn_id": "no-such-turn", "value": 1}, 404, "turn_id"),
        ({"session_id": "no-such-session", "value": 1}, 404, "session_id"),
    ],
)
def test_bad_requests(proxy: ProxyProcess, body: dict[str, Any], status: int, param: str) -> None:
    resp = _post(proxy, body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["message"]


def test_bad_bodies(proxy: ProxyProcess) -> None:
    for raw in (b"", b"not json", b"[1, 2]"):
        resp = httpx.post(
            f"{proxy.url}/v1/feedback",
            content=raw,
            timeout=10,
            headers={"content-type": "application/json"},
        )
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    assert httpx.get(f"{proxy.url}/v1/feedback", timeout=10).status_code == 405
    count = rows(proxy.paths, "SELECT count(*) AS n FROM feedback WHERE turn_id = 't'")
    assert count == [{"n": 0}], "refused feedback is never stored"


def test_feedback_needs_the_proxy_key(stub: StubUpstream, tmp_path: Path) -> None:
    env = {
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_PROXY__API_KEYS": "k-test",
    }
    with ProxyProcess(tmp_path / "auth", env) as proxy:
        _chat(proxy, "auth-s", "hello", {"Authorization": "Bearer k-test"})
        body = {"session_id": "auth-s", "value": 1}
        assert _post(proxy, body).status_code == 401
        assert _post(proxy, body, {"Authorization": "Bearer nope"}).status_code == 401
        assert _post(proxy, body, {"Authorization": "Bearer k-test"}).status_code == 201
