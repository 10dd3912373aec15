"""Skills on the proxy's hot path: the relevant skill is injected upstream and recorded on the
turn; the client's request is recorded as sent; a broken library never breaks chat."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import openai

from metaclaw.skills.query import inject
from tests.helpers import REPO, ProxyProcess
from tests.stubs.upstream_server import StubUpstream

SKILL = """---
name: answer_in_json
description: When the user asks for JSON, answer with one fenced json code block and nothing else.
category: formatting
---
# Answer in JSON
Reply with a single fenced ```json block. Never add prose around it.
"""


def _import_skill(home: Path, tmp: Path) -> None:
    folder = tmp / "skills" / "answer_in_json"
    folder.mkdir(parents=True)
    (folder / "SKILL.md").write_text(SKILL)
    env = {**os.environ, "METACLAW_HOME": str(home), "METACLAW_CONFIG": str(home / "none.toml")}
    argv = [sys.executable, "-m", "metaclaw", "skills", "import", str(tmp / "skills")]
    out = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def _wait_ready(proxy: ProxyProcess) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if (proxy.health().get("skills") or {}).get("ready"):
            return
        time.sleep(0.2)
    raise AssertionError(f"skill library never ready: {proxy.health()}")


def test_relevant_skill_is_injected_and_recorded(stub: StubUpstream, tmp_path: Path) -> None:
    home = tmp_path / "home"
    _import_skill(home, tmp_path)
    env = {"METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1"}
    with ProxyProcess(home, env) as proxy:
        _wait_ready(proxy)
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        marker = uuid.uuid4().hex  # in `user`: a hex string in the text would blur the query
        client.chat.completions.create(
            model="m",
            user=marker,
            messages=[{"role": "user", "content": "list three colours as JSON please"}],
        )
        sent = [r for r in stub.requests() if marker in json.dumps(r["body"])][-1]["body"]
        assert sent["messages"][0]["role"] == "system"
        assert "fenced ```json block" in sent["messages"][0]["content"]
        turn = proxy.turns(f"session_id = '{marker}'")[0]
        assert len(turn["injected_skills"]) == 1 and turn["injected_skills"][0].endswith("@1")
        assert turn["skill_set_version"] >= 1
        assert json.loads(turn["request"])["messages"][0]["role"] == "user", (
            "the request is recorded as the client sent it"
        )
        # what was served is recorded exactly: the request + injected_text rebuild it
        assert turn["injected_text"] and turn["injected_text"] in sent["messages"][0]["content"]
        assert (
            inject(json.loads(turn["request"])["messages"], turn["injected_text"])
            == sent["messages"]
        )

        other = uuid.uuid4().hex
        client.chat.completions.create(
            model="m",
            user=other,
            messages=[{"role": "user", "content": "what is the capital of France"}],
        )
        unrelated = [r for r in stub.requests() if other in json.dumps(r["body"])][-1]["body"]
        assert unrelated["messages"][0]["role"] == "user", "an irrelevant skill is not injected"


def test_broken_skill_library_never_breaks_chat(stub: StubUpstream, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "skills").mkdir(parents=True)
    (home / "skills" / "garbage.lance").write_text("not a table")  # a corrupt library
    env = {"METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1"}
    with ProxyProcess(home, env) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "answer as JSON"}]
        )
        assert reply.choices[0].message.content == "Echo: answer as JSON"
        assert proxy.turns()[0]["injected_skills"] == []
        assert proxy.turns()[0]["injected_text"] is None
