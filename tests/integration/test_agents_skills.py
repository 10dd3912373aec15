"""Per-agent skill libraries through the real proxy process, LanceDB, the DuckDB ledger and the
official `openai` SDK: two agents with a same-named skill each get only their own, an agent that
shares another's library gets both, evolution from one agent's failed turn lands in that agent's
library only, and a library written before agents reads as the `default` agent's."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from metaclaw.ledger import append_rows
from metaclaw.ledger.records import now_micros
from metaclaw.skills import ops
from metaclaw.skills.critic import Critic, CriticEndpoint
from metaclaw.skills.library import SkillLibrary
from metaclaw.skills.model import Skill, skill_id_for, validate
from metaclaw.skills.store import Change, SkillStore
from tests.helpers import ProxyProcess, metaclaw_cli
from tests.integration.test_agents_proxy import _cli
from tests.integration.test_proxy_skills import _wait_ready
from tests.skills_helpers import EMBEDDINGS, skills_settings
from tests.stubs.critic_server import StubCritic
from tests.stubs.upstream_server import StubUpstream

QUESTION = "answer as JSON: list three colours"
RULES = {  # agent → the line only its own `answer_in_json` says
    "default": "DEFAULT-RULE: one json block.",
    "coder": "CODER-RULE: one json block, keys sorted.",
    "writer": "WRITER-RULE: one json block, keys in prose order.",
    "helper": "HELPER-RULE: one json block, no comments.",
}


def answer_in_json(agent: str) -> Skill:
    return validate(
        Skill(
            name="answer_in_json",
            description="Answer in JSON: one fenced json code block.",
            when_to_use="The user asks for an answer as JSON.",
            instructions=RULES[agent],
            category="formatting",
            agent_id=agent,
        )
    )


@dataclass
class Setup:
    proxy: ProxyProcess
    keys: dict[str, str]
    store: SkillStore


@pytest.fixture(scope="module")
def setup(stub: StubUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    home = tmp_path_factory.mktemp("agents-skills-home")
    keys = {name: _cli(home, "add", name) for name in ("coder", "writer")}
    keys["helper"] = _cli(home, "add", "helper", "--shares-skills-with", "coder")
    store = SkillStore.open(skills_settings(home))
    store.commit([Change("created", answer_in_json(agent)) for agent in RULES])
    env = {
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_SKILLS__EMBEDDINGS_DIR": str(EMBEDDINGS),
    }
    with ProxyProcess(home, env) as proxy:
        _wait_ready(proxy)
        yield Setup(proxy, keys, store)


def ask(setup: Setup, stub: StubUpstream, agent: str, session: str) -> tuple[str, list[str]]:
    """The system prompt the upstream got for `agent`'s question, and the turn's skills."""
    client = openai.OpenAI(
        base_url=setup.proxy.url + "/v1", api_key=setup.keys[agent], max_retries=0
    )
    marker = uuid.uuid4().hex  # in `user`: a hex string in the text would blur the query
    raw = client.chat.completions.with_raw_response.create(
        model="m",
        user=marker,
        messages=[{"role": "user", "content": QUESTION}],
        extra_headers={"X-Session-Id": session},
    )
    sent = [r for r in stub.requests() if marker in json.dumps(r["body"])][-1]["body"]
    assert sent["messages"][0]["role"] == "system", f"{agent} got no skill"
    (turn,) = setup.proxy.turns(f"turn_id = '{raw.headers['x-metaclaw-turn-id']}'")
    assert turn["agent_id"] == agent
    return sent["messages"][0]["content"], list(turn["injected_skills"])


def rules_in(system: str) -> set[str]:
    return {agent for agent, rule in RULES.items() if rule in system}


def test_agents_with_a_same_named_skill_each_get_their_own(
    setup: Setup, stub: StubUpstream
) -> None:
    session = f"same-{uuid.uuid4().hex[:8]}"  # one session id for both: pins stay per agent
    for agent in ("coder", "writer", "coder"):
        system, injected = ask(setup, stub, agent, session)
        assert rules_in(system) == {agent}
        assert injected == [f"{skill_id_for('answer_in_json', agent)}@1"]


def test_an_agent_that_shares_another_library_gets_both(setup: Setup, stub: StubUpstream) -> None:
    system, injected = ask(setup, stub, "helper", f"helper-{uuid.uuid4().hex[:8]}")
    assert rules_in(system) == {"helper", "coder"}
    assert sorted(injected) == sorted(
        f"{skill_id_for('answer_in_json', a)}@1" for a in ("helper", "coder")
    )
    system, _ = ask(setup, stub, "coder", f"coder-{uuid.uuid4().hex[:8]}")
    assert rules_in(system) == {"coder"}, "sharing is one way: coder does not read helper's"


def test_evolution_from_one_agents_failed_turn_lands_in_its_library_only(
    setup: Setup, stub: StubUpstream
) -> None:
    """coder has an evolved (not curated) `close_every_brace`; the critic proposes a skill of
    that very name for writer's failure. It is a new skill in writer's library; coder's skill
    is neither revised nor shown to the critic."""
    store = setup.store
    coders = validate(
        Skill(
            name="close_every_brace",
            description="Close every brace and bracket in generated JSON.",
            when_to_use="The answer contains JSON.",
            instructions="Count opening and closing braces before sending.",
            author="critic-stub",
            agent_id="coder",
        )
    )
    store.commit([Change("created", coders)])
    session = f"fail-{uuid.uuid4().hex[:8]}"
    _, _ = ask(setup, stub, "writer", session)
    (failed,) = setup.proxy.turns(f"session_id = '{session}'", "turn_id")
    paths = setup.proxy.paths
    diagnosis = "d-" + uuid.uuid4().hex[:12]
    append_rows(
        paths.wal,
        "diagnoses",
        [
            {
                "diagnosis_id": diagnosis,
                "turn_ids": [failed["turn_id"]],
                "root_cause_category": "format_error",
                "explanation": "The JSON answer was cut off with an unclosed brace.",
                "critic_model": "critic-stub",
                "ts": now_micros(),
                "session_id": session,
                "evidence": json.dumps([{"quote": "{", "note": "never closed"}]),
                "prompt_version": "diagnose-test",
            }
        ],
    )
    settings = skills_settings(setup.proxy.home)
    clusters = ops.pending_clusters(settings, store, "critic-stub")
    mine = [g for g in clusters if any(d.diagnosis_id == diagnosis for d in g)]
    assert [[d.agent_id for d in g] for g in mine] == [["writer"]]
    fix = {
        "name": "close_every_brace",
        "description": "Close every brace and bracket in generated JSON.",
        "when_to_use": "The answer contains JSON.",
        "instructions": "Write the closing brace right after the opening one, then fill in.",
    }
    with StubCritic() as critic_stub:
        critic_stub.script({"content": {"action": "create", "skill": fix, "rationale": "x"}})
        endpoint = CriticEndpoint(critic_stub.base_url + "/v1", "critic-stub", "k")
        proposals = ops.propose(store, Critic(endpoint, retries=1), mine)
        prompt = json.dumps(critic_stub.requests())
    assert coders.skill_id not in prompt, "the critic is not shown another agent's skills"
    outcome, _ = ops.apply_proposals(settings, store, proposals, "critic-stub")
    assert [(c.event, c.skill.agent_id) for c in outcome.changes] == [("created", "writer")]
    writers = store.history(skill_id_for("close_every_brace", "writer"))
    assert [(s.version, s.status, s.agent_id) for s in writers] == [(1, "proposed", "writer")]
    assert [(s.version, s.instructions) for s in store.history(coders.skill_id)] == [
        (1, coders.instructions)
    ], "coder's library is untouched"


def _skills_cli(home: Path, *args: str) -> list[dict[str, object]]:
    out = metaclaw_cli(
        home, "skills", *args, "--json", env={"METACLAW_SKILLS__EMBEDDINGS_DIR": str(EMBEDDINGS)}
    )
    found: list[dict[str, object]] = json.loads(out)
    return found


def test_a_library_written_before_agents_is_the_default_agents(tmp_path: Path) -> None:
    settings = skills_settings(tmp_path / "home")
    old = SkillStore.open(settings)
    skill = answer_in_json("default")
    old.commit([Change("created", skill)])
    old.skills.drop_columns(["agent_id"])  # the table as a library before agents wrote it
    assert "agent_id" not in old.skills.schema.names

    store = SkillStore.open(settings)
    assert "agent_id" in store.skills.schema.names
    (found,) = store.current()
    assert (found.skill_id, found.agent_id) == (skill.skill_id, "default")
    library = SkillLibrary.open(settings)
    messages = [{"role": "user", "content": QUESTION}]
    assert library.select(messages).skills == [skill.ref]
    assert library.select(messages, libraries=("coder",)).skills == []

    home = settings.paths.home
    listed = _skills_cli(home, "list", "--agent", "default")
    assert [(s["name"], s["agent_id"]) for s in listed] == [("answer_in_json", "default")]
    assert _skills_cli(home, "list", "--agent", "coder") == []
