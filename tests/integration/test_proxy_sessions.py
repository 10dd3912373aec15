"""Sessions hold across proxies (issue 16, item 5): two proxy apps on one METACLAW_HOME, each with
its own chain store connection (a restart, or a second worker), continue each other's
conversations through the persisted hash chain, and agents with different system prompts never
share one. Official `openai` client over real HTTP."""

from __future__ import annotations

import uuid
from pathlib import Path

import openai

from metaclaw.config import Settings, SkillsSettings, UpstreamSettings
from metaclaw.proxy.app import create_app
from tests.helpers import rows
from tests.served_app import ServedApp
from tests.stubs.upstream_server import StubUpstream


def test_a_second_proxy_continues_the_conversation(stub: StubUpstream, tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        upstream=UpstreamSettings(base_url=stub.base_url + "/v1"),
        skills=SkillsSettings(enabled=False),
    )
    marker = uuid.uuid4().hex
    with ServedApp(create_app(settings)) as first, ServedApp(create_app(settings)) as second:
        one = openai.OpenAI(base_url=first.url + "/v1", api_key="agent-key", max_retries=0)
        two = openai.OpenAI(base_url=second.url + "/v1", api_key="agent-key", max_retries=0)
        history = [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"hi {marker}"},
        ]
        reply = one.chat.completions.with_raw_response.create(model="m", messages=history)
        session = reply.headers["x-metaclaw-session-id"]
        history += [
            {"role": "assistant", "content": reply.parse().choices[0].message.content},
            {"role": "user", "content": "and then?"},
        ]
        follow = two.chat.completions.with_raw_response.create(model="m", messages=history)
        assert follow.headers["x-metaclaw-session-id"] == session
        other_agent = [{"role": "system", "content": "You are verbose."}, *history[1:]]
        apart = two.chat.completions.with_raw_response.create(model="m", messages=other_agent)
        assert apart.headers["x-metaclaw-session-id"] != session
    turns = rows(
        settings.paths,
        "SELECT session_id, turn_index FROM turns WHERE "
        f"request::VARCHAR LIKE '%{marker}%' ORDER BY ts_start",
    )
    assert [t["turn_index"] for t in turns] == [0, 1, 1]
    assert [t["session_id"] == session for t in turns] == [True, True, False]
