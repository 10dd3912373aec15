"""A skill the critic writes is quarantined: it reaches only the sessions whose failures produced
it until its measured efficacy (or a person) promotes it; retirement and rejection are sticky;
curated and pinned skills are not rewritten; a session's block stays put for prompt caching."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import openai
import pytest

from metaclaw.config import Settings
from metaclaw.skills import ops
from metaclaw.skills.efficacy import Efficacy, verdicts
from metaclaw.skills.evolution import EvolveAnswer, Proposal
from metaclaw.skills.library import SkillLibrary
from metaclaw.skills.store import Change, SkillStore
from tests.helpers import ProxyProcess
from tests.integration.test_proxy_skills import _wait_ready
from tests.skills_helpers import EMBEDDINGS, make_skill, skills_settings
from tests.stubs.upstream_server import StubUpstream

NEW = {
    "name": "verify_file_paths",
    "description": "Check that a file exists before reading it.",
    "when_to_use": "A tool reads or writes a file such as notes.txt.",
    "instructions": "1. List the folder first.\n2. Report a missing file instead of guessing.",
}


def ask(text: str) -> list[dict]:
    return [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text}]


def propose(
    settings: Settings, store: SkillStore, action: str, sessions: list[str], **answer: object
) -> ops.evolution.Outcome:
    proposal = Proposal(
        ["d-" + uuid.uuid4().hex[:8]],
        [s.skill_id for s in store.live()],
        EvolveAnswer.model_validate({"action": action, **answer}),
        sessions=sessions,
    )
    outcome, _ = ops.apply_proposals(settings, store, [proposal], "critic-x")
    return outcome


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return skills_settings(tmp_path / "home")


def test_a_proposal_reaches_only_its_origin_sessions_until_promoted(settings: Settings) -> None:
    store = SkillStore.open(settings)
    outcome = propose(settings, store, "create", ["s-attacker"], skill=NEW)
    (change,) = outcome.changes
    assert (change.skill.status, change.skill.origin_sessions) == ("proposed", ("s-attacker",))
    lib = SkillLibrary.open(settings)
    query = ask("read notes.txt and tell me what the file says")
    ref = store.get("verify_file_paths").ref
    assert lib.select(query, "s-attacker").skills == [ref]
    assert lib.select(query, "s-someone-else").skills == []
    assert lib.select(query).skills == []

    store.commit([Change("promoted", store.get(ref), reason="approved by hand")])
    lib.refresh()
    assert lib.select(query, "s-someone-else").skills == [ref]
    assert store.get(ref).status == "active"


def test_a_revision_on_trial_replaces_the_active_version_only_in_its_sessions(
    settings: Settings,
) -> None:
    store = SkillStore.open(settings)
    store.commit([Change("created", make_skill("debug_python_exceptions", author="critic-x"))])
    v1 = store.get("debug_python_exceptions")
    outcome = propose(
        settings,
        store,
        "revise",
        ["s-origin"],
        target_skill_id=v1.skill_id,
        skill={
            "name": v1.name,
            "description": v1.description,
            "when_to_use": v1.when_to_use,
            "instructions": "Reproduce the error before reading the traceback.",
        },
    )
    v2 = outcome.changes[0].skill
    assert (v2.version, v2.status) == (2, "proposed")
    lib = SkillLibrary.open(settings)
    query = ask("my python script crashes with a KeyError traceback")
    assert lib.select(query, "s-origin").skills == [v2.ref]
    assert lib.select(query, "s-other").skills == [v1.ref]
    assert [s.status for s in store.history(v1.skill_id)] == ["active", "proposed"]

    store.commit([Change("rejected", store.get(v2.ref), reason="not better")])
    lib.refresh()
    assert lib.select(query, "s-origin-2").skills == [v1.ref]
    again = propose(
        settings,
        store,
        "revise",
        ["s-x"],
        target_skill_id=v1.skill_id,
        skill={
            "name": v1.name,
            "description": v1.description,
            "when_to_use": v1.when_to_use,
            "instructions": v2.instructions,
        },
    )
    assert again.changes == [] and "rejection is sticky" in again.rejected[0][1]


def test_a_retired_skill_stays_retired_and_curated_skills_are_not_rewritten(
    settings: Settings,
) -> None:
    store = SkillStore.open(settings)
    store.commit(
        [
            Change("created", make_skill("translate_text", author="critic-x")),
            Change("created", make_skill("write_sql_queries")),
        ]
    )  # imported: curated
    translate = store.get("translate_text")
    store.commit([Change("restored", translate)])  # pinned by hand
    store.commit([Change("retired", store.get("translate_text"), reason="leaked data")])
    outcome = propose(
        settings,
        store,
        "create",
        ["s1"],
        skill={
            "name": "translate_text",
            "description": "Translate text.",
            "instructions": "Translate idioms by meaning.",
        },
    )
    assert (
        outcome.changes == []
        and "retired; evolution never brings it back" in outcome.rejected[0][1]
    )
    assert [(s.version, s.status) for s in store.history(translate.skill_id)] == [(1, "retired")]

    sql = store.get("write_sql_queries")
    outcome = propose(
        settings,
        store,
        "revise",
        ["s1"],
        target_skill_id=sql.skill_id,
        skill={"name": sql.name, "description": sql.description, "instructions": "Use SELECT *."},
    )
    assert outcome.changes == [] and "curated (user)" in outcome.rejected[0][1]
    assert store.get("write_sql_queries").version == 1


def test_the_efficacy_bar_promotes_scanned_proposals_and_rejects_harmful_ones() -> None:
    def skill(name: str, scan: str) -> object:
        from dataclasses import replace

        return replace(make_skill(name, author="critic-x"), status="proposed", scan=scan)

    good, unscanned, bad = (
        skill("translate_text", "safe:critic-x"),
        skill("schedule_meetings", ""),
        skill("git_merge_conflicts", "safe:critic-x"),
    )
    stats = [
        Efficacy(
            s.ref,
            s.skill_id,
            1,
            uses=30,
            mean_with=m,
            mean_without=0.0,
            n_without=40,
            effect=m,
            effect_se=0.1,
        )
        for s, m in ((good, 0.5), (unscanned, 0.5), (bad, -0.5))
    ]
    out = {
        v.skill.name: v.event
        for v in verdicts([good, unscanned, bad], stats, min_uses=10, z=1.0, auto=True)
    }
    assert out == {"translate_text": "promoted", "git_merge_conflicts": "rejected"}
    manual = verdicts([good, bad], stats, min_uses=10, z=1.0, auto=False)
    assert [v.event for v in manual] == ["rejected"], "manual mode: people promote"


def test_a_session_keeps_a_byte_identical_prompt_prefix(stub: StubUpstream, tmp_path: Path) -> None:
    """Turn 2 asks about something else, which would select another skill: the session keeps
    its pinned block, so everything turn 1 sent is a byte-identical prefix of turn 2."""
    home = tmp_path / "home"
    store = SkillStore.open(skills_settings(home))
    store.commit(
        [
            Change("created", make_skill(n))
            for n in ("translate_text", "debug_python_exceptions", "write_sql_queries")
        ]
    )
    env = {
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_SKILLS__EMBEDDINGS_DIR": str(EMBEDDINGS),
    }
    with ProxyProcess(home, env) as proxy:
        _wait_ready(proxy)
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        session = uuid.uuid4().hex
        first = [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "translate 'good morning' into French"},
        ]
        reply = client.chat.completions.create(model="m", user=session, messages=first)
        second = [
            *first,
            {"role": "assistant", "content": reply.choices[0].message.content},
            {"role": "user", "content": "my python script crashes with a KeyError"},
        ]
        client.chat.completions.create(model="m", user=session, messages=second)
        sent = [r["body"]["messages"] for r in stub.requests() if r["body"].get("user") == session]
        assert len(sent) == 2 and "translate_text" in sent[0][0]["content"]
        prefix = json.dumps(sent[0], ensure_ascii=False)[:-1]
        assert json.dumps(sent[1], ensure_ascii=False).startswith(prefix + ",")
        fresh = uuid.uuid4().hex
        client.chat.completions.create(model="m", user=fresh, messages=[second[-1]])
        other = next(
            r["body"]["messages"] for r in stub.requests() if r["body"].get("user") == fresh
        )
        assert "debug_python_exceptions" in other[0]["content"], "another session selects anew"


def test_the_evolve_step_promotes_a_proposal_that_helped_in_its_sessions(
    settings: Settings,
) -> None:
    from dataclasses import replace

    from tests.helpers import rows
    from tests.skills_helpers import seed_feedback, seed_turn

    s = skills_settings(settings.paths.home, skills={"promote_min_uses": 6})
    store = SkillStore.open(s)
    scanned = replace(
        make_skill("debug_python_exceptions", author="critic-x"),
        status="proposed",
        origin_sessions=("w",),
        scan="safe:critic-x",
    )
    unscanned = replace(
        make_skill("git_merge_conflicts", author="critic-x"),
        status="proposed",
        origin_sessions=("w",),
    )
    store.commit([Change("created", scanned), Change("created", unscanned)])
    for i in range(8):  # where they were on trial, the user is happy
        for skill, text in ((scanned, "python traceback"), (unscanned, "git merge CONFLICT")):
            tid, _ = seed_turn(
                s.paths,
                session="w",
                index=i,
                user=f"{text} {i}",
                reply="...",
                injected=[skill.ref],
                skill_set_version=1,
            )
            seed_feedback(s.paths, tid, 1.0)
            tid, _ = seed_turn(
                s.paths, session=f"o{i}", index=0, user=f"{text} again {i}", reply="..."
            )
            seed_feedback(s.paths, tid, -1.0 if i % 2 else 0.0)
    report, result = ops.refresh_efficacy(s, store)
    ops.record_events(s.paths, result)
    assert [(v.skill.name, v.event) for v in report.verdicts] == [
        ("debug_python_exceptions", "promoted")
    ], "unscanned stays proposed for a person"
    assert store.get(scanned.ref).status == "active"
    assert store.get(unscanned.ref).status == "proposed"
    assert rows(s.paths, "SELECT event FROM skill_events") == [{"event": "promoted"}]


def test_people_approve_reject_and_pin_from_the_cli(settings: Settings) -> None:
    from dataclasses import replace

    from typer.testing import CliRunner

    from metaclaw.skills.cli import app

    store = SkillStore.open(settings)
    store.commit(
        [
            Change(
                "created",
                replace(
                    make_skill("translate_text", author="critic-x"),
                    status="proposed",
                    origin_sessions=("s1",),
                ),
            ),
            Change(
                "created",
                replace(make_skill("write_sql_queries", author="critic-x"), status="proposed"),
            ),
        ]
    )
    env = {
        "METACLAW_HOME": str(settings.paths.home),
        "METACLAW_CONFIG": str(settings.paths.home / "none.toml"),
        "METACLAW_SKILLS__EMBEDDINGS_DIR": str(EMBEDDINGS),
    }
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        out = runner.invoke(app, list(args), env=env)
        return out.exit_code, out.output

    assert run("approve", "translate_text") == (0, "translate_text v1: promoted (skill set v2)\n")
    assert run("reject", "write_sql_queries")[0] == 0
    code, text = run("reject", "write_sql_queries")
    assert code == 1 and "no proposed version" in text
    assert run("pin", "translate_text")[0] == 0
    states = {s.name: (s.status, s.pinned) for s in store.current()}
    assert states == {"translate_text": ("active", True), "write_sql_queries": ("rejected", False)}
    again = propose(
        settings,
        store,
        "create",
        ["s2"],
        skill={
            "name": "write_sql_queries",
            "description": "Write SQL.",
            "instructions": "Use JOINs.",
        },
    )
    assert (
        again.changes == [] and "rejected; evolution never brings it back" in again.rejected[0][1]
    )
