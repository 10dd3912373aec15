"""Many agents, one MetaClaw, through the real proxy process and the official SDKs: a key
decides the agent, each agent's turns and feedback carry it, one agent cannot rate another's
turns (the same 404 as an unknown id), agent keys never reach the upstream, and with no agents
nothing changes. A ledger written before agents reads as the `default` agent."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metaclaw.agents.store import registry_path
from metaclaw.config import LedgerPaths
from metaclaw.ledger import WalWriter
from metaclaw.ledger.lookup import find_turn, session_has_completed_turn
from metaclaw.ledger.manifest import Manifest
from metaclaw.ledger.records import now_micros
from metaclaw.ledger.schemas import FEEDBACK, TURNS
from tests.helpers import ProxyProcess, metaclaw_cli, rows
from tests.stubs.upstream_server import StubUpstream


def _cli(home: Path, *args: str) -> str:
    """`metaclaw agents ...` as a user runs it; its stdout (a key, for add / rotate-key)."""
    return metaclaw_cli(home, "agents", *args)


@pytest.fixture(scope="module")
def agents(
    stub: StubUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyProcess, dict[str, str]]]:
    """A proxy with two agents (keys made by the CLI) in front of the stub, no upstream key:
    the configuration in which a client key would be passed through if it were not ours."""
    home = tmp_path_factory.mktemp("agents-home")
    keys = {"coder": _cli(home, "add", "coder")}
    keys["helper"] = _cli(home, "add", "helper", "--shares-skills-with", "coder")
    with ProxyProcess(home, {"METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1"}) as proc:
        yield proc, keys


def _openai(proxy: ProxyProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=key, max_retries=0)


def _anthropic(proxy: ProxyProcess, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=proxy.url, api_key=key, max_retries=0)


def _ask_openai(proxy: ProxyProcess, key: str, text: str, session: str) -> str:
    raw = _openai(proxy, key).chat.completions.with_raw_response.create(
        model="m",
        messages=[{"role": "user", "content": text}],
        extra_headers={"X-Session-Id": session},
    )
    assert raw.parse().choices[0].message.content == f"Echo: {text}"
    return raw.headers["x-metaclaw-turn-id"]


def _ask_anthropic(proxy: ProxyProcess, key: str, text: str, session: str) -> str:
    raw = _anthropic(proxy, key).messages.with_raw_response.create(
        model="claude-test",
        max_tokens=50,
        messages=[{"role": "user", "content": text}],
        extra_headers={"X-Session-Id": session},
    )
    assert raw.parse().content[0].text == f"Echo: {text}"  # type: ignore[union-attr]
    return raw.headers["x-metaclaw-turn-id"]


def _feedback(proxy: ProxyProcess, key: str | None, body: dict[str, Any]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{proxy.url}/v1/feedback", json=body, headers=headers, timeout=10)


def test_the_registry_file_holds_no_key(agents: tuple[ProxyProcess, dict[str, str]]) -> None:
    proxy, keys = agents
    text = registry_path(proxy.home).read_text()
    assert all(key.startswith("mck-") and key not in text for key in keys.values())
    assert json.loads(text)["agents"][1]["shares_skills_with"] == ["coder"]


def test_each_agent_sees_its_own_turns(
    agents: tuple[ProxyProcess, dict[str, str]], stub: StubUpstream
) -> None:
    proxy, keys = agents
    marker = uuid.uuid4().hex
    session = f"shared-{marker[:8]}"  # both agents name the same session: still kept apart
    coder = _ask_openai(proxy, keys["coder"], f"coder {marker}", session)
    helper = _ask_anthropic(proxy, keys["helper"], f"helper {marker}", session)
    got = {
        r["turn_id"]: r["agent_id"]
        for r in proxy.turns(f"request::VARCHAR LIKE '%{marker}%'", "turn_id, agent_id")
    }
    assert got == {coder: "coder", helper: "helper"}
    mine = proxy.turns(f"agent_id = 'coder' AND request::VARCHAR LIKE '%{marker}%'", "turn_id")
    assert mine == [{"turn_id": coder}]
    # the upstream never sees an agent key, though no upstream key is configured
    sent = [r for r in stub.requests() if marker in json.dumps(r["body"])]
    assert len(sent) == 2
    for request in sent:
        seen = json.dumps(request["headers"])
        assert not any(key in seen for key in keys.values()), seen
        assert "authorization" not in request["headers"] and "x-api-key" not in request["headers"]


def test_an_agent_cannot_rate_another_agents_turn(
    agents: tuple[ProxyProcess, dict[str, str]],
) -> None:
    proxy, keys = agents
    marker = uuid.uuid4().hex
    session = f"s-{marker[:8]}"
    helper_session = f"h-{marker[:8]}"
    coder_turn = _ask_openai(proxy, keys["coder"], f"q {marker}", session)
    helper_turn = _ask_openai(proxy, keys["helper"], f"q2 {marker}", helper_session)

    stolen = _feedback(proxy, keys["coder"], {"turn_id": helper_turn, "value": -1})
    unknown = _feedback(proxy, keys["coder"], {"turn_id": "x" * len(helper_turn), "value": -1})
    assert stolen.status_code == unknown.status_code == 404
    assert stolen.content == unknown.content.replace(b"x" * len(helper_turn), helper_turn.encode())

    by_session = _feedback(proxy, keys["coder"], {"session_id": helper_session, "value": -1})
    no_session = _feedback(
        proxy, keys["coder"], {"session_id": "y" * len(helper_session), "value": -1}
    )
    assert by_session.status_code == no_session.status_code == 404
    assert by_session.content == no_session.content.replace(
        b"y" * len(helper_session), helper_session.encode()
    )

    own = _feedback(proxy, keys["coder"], {"turn_id": coder_turn, "value": 1})
    assert own.status_code == 201, own.text
    assert own.json()["agent_id"] == "coder"
    assert _feedback(proxy, keys["helper"], {"turn_id": helper_turn, "value": 1}).status_code == 201
    stored = rows(
        proxy.paths,
        f"SELECT turn_id, agent_id FROM feedback WHERE turn_id IN ('{coder_turn}', "
        f"'{helper_turn}') ORDER BY agent_id",
    )
    assert stored == [
        {"turn_id": coder_turn, "agent_id": "coder"},
        {"turn_id": helper_turn, "agent_id": "helper"},
    ]
    assert rows(
        proxy.paths,
        f"SELECT count(*) AS n FROM feedback WHERE value = -1 AND turn_id = '{helper_turn}'",
    ) == [{"n": 0}], "refused feedback is never stored"


def test_a_missing_or_unknown_key_is_refused_in_each_api_shape(
    agents: tuple[ProxyProcess, dict[str, str]],
) -> None:
    proxy, _ = agents
    with pytest.raises(openai.AuthenticationError) as oa:
        _ask_openai(proxy, "mck-not-a-key", "hi", "s")
    body = oa.value.body
    assert isinstance(body, dict) and body["code"] == "invalid_api_key"
    assert "metaclaw agents rotate-key" in body["message"]
    with pytest.raises(anthropic.AuthenticationError) as an:
        _ask_anthropic(proxy, "mck-not-a-key", "hi", "s")
    assert an.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    missing = httpx.post(
        f"{proxy.url}/v1/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert missing.status_code == 401
    assert missing.json()["error"]["message"].startswith("missing API key: send your agent's key")
    assert _feedback(proxy, None, {"session_id": "s", "value": 1}).status_code == 401


def test_a_rotated_key_takes_effect_without_a_restart(
    agents: tuple[ProxyProcess, dict[str, str]],
) -> None:
    proxy, keys = agents
    old = keys["helper"]
    keys["helper"] = _cli(proxy.home, "rotate-key", "helper")
    with pytest.raises(openai.AuthenticationError):
        _ask_openai(proxy, old, "old key", "rot")
    turn = _ask_openai(proxy, keys["helper"], f"new key {uuid.uuid4().hex}", "rot")
    assert proxy.turns(f"turn_id = '{turn}'", "agent_id") == [{"agent_id": "helper"}]
    assert "helper" in _cli(proxy.home, "list")


def test_without_agents_nothing_changes(stub: StubUpstream, tmp_path: Path) -> None:
    """No registry: no auth, every turn is `default`, and the client's own key still reaches
    the upstream (the transparent proxy of docs/architecture.md)."""
    env = {"METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1"}
    with ProxyProcess(tmp_path / "plain", env) as proxy:
        marker = uuid.uuid4().hex
        turn = _ask_openai(proxy, "sk-client-own", f"plain {marker}", "plain")
        assert proxy.turns(f"turn_id = '{turn}'", "agent_id") == [{"agent_id": "default"}]
        sent = [r for r in stub.requests() if marker in json.dumps(r["body"])]
        assert sent[-1]["headers"]["authorization"] == "Bearer sk-client-own"
        fb = _feedback(proxy, None, {"turn_id": turn, "value": 1})
        assert fb.status_code == 201 and fb.json()["agent_id"] == "default"


def _old_ledger(home: Path) -> tuple[str, str]:
    """turns and feedback Parquet files as a version before agents wrote them: every column of
    today's schemas but `agent_id`."""
    paths = LedgerPaths(home)
    turn_id, session = uuid.uuid4().hex, "old-session"
    now = now_micros()
    values = {
        TURNS.name: {
            "turn_id": turn_id,
            "session_id": session,
            "ts_start": now,
            "status": "ok",
            "request": json.dumps({"messages": [{"role": "user", "content": "old"}]}),
        },
        FEEDBACK.name: {"feedback_id": "old-fb", "turn_id": turn_id, "value": 1.0, "ts": now},
    }
    manifest = Manifest()
    for spec in (TURNS, FEEDBACK):
        schema = pa.schema([f for f in spec.schema if f.name != "agent_id"])
        row = values[spec.name]
        table = pa.Table.from_pydict({f.name: [row.get(f.name)] for f in schema}, schema=schema)
        rel = f"{spec.name}/date=2026-01-01/part-old.parquet"
        (paths.ledger / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, paths.ledger / rel)
        assert "agent_id" not in pq.read_schema(paths.ledger / rel).names
        manifest.files[spec.name] = [rel]
    manifest.save(paths.manifest)
    return turn_id, session


def test_a_ledger_from_before_agents_reads_as_the_default_agent(
    stub: StubUpstream, tmp_path: Path
) -> None:
    home = tmp_path / "old"
    turn_id, session = _old_ledger(home)
    paths = LedgerPaths(home)
    assert rows(paths, "SELECT turn_id, agent_id FROM turns") == [
        {"turn_id": turn_id, "agent_id": "default"}
    ]
    assert rows(paths, "SELECT agent_id FROM feedback") == [{"agent_id": "default"}]
    assert rows(paths, "SELECT turn_id FROM turn_feedback") == [{"turn_id": turn_id}]
    ref = find_turn(paths, turn_id)
    assert ref is not None and ref.agent_id == "default"
    assert session_has_completed_turn(paths, session, "default")
    assert not session_has_completed_turn(paths, session, "coder")

    # agents added later: the old turns are the default agent's (a proxy.api_keys key), and
    # a new agent cannot rate them
    coder = _cli(home, "add", "coder")
    env = {
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_PROXY__API_KEYS": "k-default",
    }
    with ProxyProcess(home, env) as proxy:
        assert _feedback(proxy, coder, {"turn_id": turn_id, "value": 1}).status_code == 404
        assert _feedback(proxy, coder, {"session_id": session, "value": 1}).status_code == 404
        ok = _feedback(proxy, "k-default", {"turn_id": turn_id, "value": -1})
        assert ok.status_code == 201 and ok.json()["agent_id"] == "default"
        new = _ask_openai(proxy, coder, f"new {uuid.uuid4().hex}", "new")
    got = rows(paths, "SELECT turn_id, agent_id FROM turns ORDER BY ts_start")
    assert got == [
        {"turn_id": turn_id, "agent_id": "default"},
        {"turn_id": new, "agent_id": "coder"},
    ]


def test_feedback_counts_only_on_turns_of_its_own_agent(tmp_path: Path) -> None:
    """The view the scorers read: session feedback goes to the posting agent's latest turn in
    a session id two agents share, and turn feedback stored for another agent's turn (the proxy
    stores feedback when the ledger cannot answer its check in time) counts on none."""
    paths = LedgerPaths(tmp_path / "home")
    t0 = now_micros()

    def turn(tid: str, agent: str, at: int) -> dict[str, Any]:
        return {
            "turn_id": tid,
            "session_id": "shared",
            "ts_start": at,
            "status": "ok",
            "agent_id": agent,
        }

    with WalWriter(paths.wal) as wal:
        wal.append("turns", [turn("c1", "coder", t0), turn("h1", "helper", t0 + 10)])
        wal.append(
            "feedback",
            [
                {
                    "feedback_id": "by-session",
                    "session_id": "shared",
                    "value": 1.0,
                    "ts": t0 + 20,
                    "agent_id": "coder",
                },
                {
                    "feedback_id": "cross",
                    "turn_id": "h1",
                    "value": -1.0,
                    "ts": t0 + 20,
                    "agent_id": "coder",
                },
                {
                    "feedback_id": "own",
                    "turn_id": "h1",
                    "value": 1.0,
                    "ts": t0 + 20,
                    "agent_id": "helper",
                },
            ],
        )
    got = rows(paths, "SELECT feedback_id, turn_id FROM turn_feedback ORDER BY feedback_id")
    assert got == [
        {"feedback_id": "by-session", "turn_id": "c1"},
        {"feedback_id": "own", "turn_id": "h1"},
    ]
