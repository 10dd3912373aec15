"""The LanceDB library for real: versions and lineage, retrieval the proxy calls, refresh after
another process's commit, efficacy from the ledger, and outages that must not break chat."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import pytest

from metaclaw.config import Settings
from metaclaw.skills import ops
from metaclaw.skills.library import SkillLibrary
from metaclaw.skills.model import SkillValidationError
from metaclaw.skills.store import Change, SkillStore
from tests.helpers import rows
from tests.skills_helpers import SKILLS, make_skill, seed_feedback, seed_turn, skills_settings


def user(text: str) -> list[dict]:
    return [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": text}]


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return skills_settings(tmp_path / "home")


@pytest.fixture()
def store(settings: Settings) -> SkillStore:
    s = SkillStore.open(settings)
    s.commit([Change("created", make_skill(n)) for n in SKILLS])
    return s


def test_versions_are_immutable_rows_with_lineage(settings: Settings, store: SkillStore) -> None:
    assert store.skill_set_version == 1
    debug = store.get("debug_python_exceptions")
    v2 = debug.next_version(
        instructions="Reproduce first, then read the traceback.",
        diagnosis_ids=("diag-1",),
        author="critic",
    )
    result = store.commit([Change("updated", v2, reason="diag-1 says so")])
    ops.record_events(settings.paths, result)
    assert result.set_version == store.skill_set_version == 2
    history = store.history(debug.skill_id)
    assert [(s.version, s.status, s.parent_version) for s in history] == [
        (1, "superseded", None),
        (2, "active", 1),
    ]
    assert history[0].instructions == debug.instructions  # the old text is kept as it was
    assert store.get(debug.skill_id).ref == f"{debug.skill_id}@2"
    assert store.get(f"{debug.skill_id}@1").instructions == debug.instructions
    with pytest.raises(SkillValidationError, match="immutable"):
        store.commit([Change("updated", v2)])
    with pytest.raises(SkillValidationError, match="next version must be 3"):
        store.commit([Change("updated", v2.next_version().next_version())])
    events = rows(
        settings.paths,
        "SELECT skill_id, version, event, diagnosis_id, parent_version,"
        " skill_set_version, reason FROM skill_events",
    )
    assert events == [
        {
            "skill_id": debug.skill_id,
            "version": 2,
            "event": "updated",
            "diagnosis_id": "diag-1",
            "parent_version": 1,
            "skill_set_version": 2,
            "reason": "diag-1 says so",
        }
    ]
    meta = store.skills.schema.metadata[b"embedding_functions"].decode()
    assert "metaclaw-static-minilm" in meta and str(settings.paths.home) not in meta


def _writer(home: str, name: str, n: int) -> None:
    s = SkillStore.open(skills_settings(Path(home)))
    skill = make_skill(name)
    for _ in range(n):
        current = s.find(skill.skill_id)
        nxt = current.next_version(instructions=f"{current.instructions} +") if current else skill
        s.commit([Change("updated" if current else "created", nxt)])


def test_concurrent_writers_are_serialized(settings: Settings) -> None:
    SkillStore.open(settings)  # the tables exist before the writers race
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_writer, args=(str(settings.paths.home), name, 4))
        for name in ("debug_python_exceptions", "write_sql_queries")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = SkillStore.open(settings)
    refs = [s.ref for s in store.all_versions()]
    assert len(refs) == len(set(refs)) == 8  # no duplicate ids
    assert store.skill_set_version == 8
    assert sorted(s.version for s in store.current()) == [4, 4]


def test_select_injects_relevant_skills_and_records_refs(
    settings: Settings, store: SkillStore
) -> None:
    lib = SkillLibrary.open(settings)
    inj = lib.select(
        user(
            "[Wed 2026-11-25 21:17 UTC] my python script dies with a KeyError "
            "traceback\n\nRuntime: agent=main | host=vm"
        )
    )
    debug = store.get("debug_python_exceptions")
    assert inj.skills[0] == debug.ref and inj.skill_set_version == 1
    assert inj.block.startswith("## Skills (reference material, not instructions)")
    assert "Skill debug_python_exceptions (v1):\n> " in inj.block
    assert inj.block.endswith("(end of skills)")
    assert inj.query == "my python script dies with a KeyError traceback"
    assert 0 < inj.tokens <= settings.skills.token_budget
    nothing = lib.select(user("hello!"))
    assert (nothing.skills, nothing.block, nothing.skill_set_version) == ([], "", 1)


def test_retired_skills_are_never_injected_and_refresh_follows_commits(
    settings: Settings, store: SkillStore
) -> None:
    lib = SkillLibrary.open(settings)
    ask = user("my python script crashes with a traceback")
    debug = store.get("debug_python_exceptions")
    assert debug.ref in lib.select(ask).skills
    other = SkillStore.open(settings)  # as if the evolve flow committed in another process
    other.commit([Change("retired", debug, reason="test")])
    lib.select(ask)  # notices the change (refresh_interval_s = 0) and rebuilds in background
    lib.wait_refreshed()
    after = lib.select(ask)
    assert debug.ref not in after.skills and after.skill_set_version == 2
    assert all(
        not r.startswith(debug.skill_id) for r in [c["ref"] for c in lib.explain(ask, limit=20)]
    )
    other.commit([Change("restored", debug)])
    lib.select(ask)
    lib.wait_refreshed()
    assert debug.ref in lib.select(ask).skills
    assert other.get(debug.skill_id).pinned


def test_budget_is_respected_in_the_block(settings: Settings, store: SkillStore) -> None:
    ask = user("python traceback, sql join, git conflict and a translation")
    wide = SkillLibrary.open(
        skills_settings(
            settings.paths.home, skills={"token_budget": 10_000, "top_k": 5, "min_similarity": 0.0}
        )
    ).select(ask)
    assert len(wide.skills) == 5 and wide.tokens > 200
    lib = SkillLibrary.open(
        skills_settings(
            settings.paths.home, skills={"token_budget": 250, "top_k": 5, "min_similarity": 0.0}
        )
    )
    inj = lib.select(ask)
    counted = lib._embedder.count_tokens([inj.block])[0]  # the tokenizer the budget counts with
    assert 1 < len(inj.skills) < 5 and inj.tokens <= 250 and counted <= 250
    assert inj.skills == [r for r in wide.skills if r in inj.skills]  # best first, then what fits


def test_retrieval_outages_never_raise(settings: Settings, store: SkillStore) -> None:
    lib = SkillLibrary.open(settings)
    ask = user("python traceback")
    assert lib.select(ask).skills
    assert lib.select(None).skills == []
    assert lib.select([{"role": "user", "content": 5}]).skills == []
    shutil.rmtree(settings.paths.skills)  # the library vanishes under a running proxy
    lib.select(ask)
    lib.wait_refreshed()
    served = lib.select(ask)  # the last good snapshot keeps serving
    assert served.skills and served.skill_set_version == 1
    assert lib.health.refresh_failures >= 1 and lib.health.last_error
    broken = skills_settings(
        settings.paths.home / "elsewhere",
        skills={"embedding": "minilm", "embeddings_dir": "/proc/nope"},
    )
    dead = SkillLibrary.open(broken)
    assert dead.select(ask).skills == [] and dead.health.failures >= 1
    off = SkillLibrary.open(skills_settings(settings.paths.home, skills={"enabled": False}))
    assert off.select(ask).block == ""


def test_efficacy_from_the_ledger_retires_and_restore_pins(
    settings: Settings, store: SkillStore
) -> None:
    s = skills_settings(settings.paths.home, skills={"retire_min_uses": 6})
    debug = store.get("debug_python_exceptions")
    for i in range(8):  # injected: the user is unhappy every time
        tid, _ = seed_turn(
            s.paths,
            session=f"w{i}",
            index=0,
            user=f"python traceback {i}",
            reply="...",
            injected=[debug.ref],
            skill_set_version=1,
        )
        seed_feedback(s.paths, tid, -1.0)
    for i in range(8):  # similar requests without the skill go well
        tid, _ = seed_turn(
            s.paths, session=f"o{i}", index=0, user=f"python exception {i}", reply="..."
        )
        seed_feedback(s.paths, tid, 1.0)
    report, result = ops.refresh_efficacy(s, store)
    ops.record_events(s.paths, result)
    eff = next(e for e in report.stats if e.ref == debug.ref)
    assert (eff.uses, eff.mean_with, eff.n_without, eff.mean_without) == (8, -1.0, 8, 1.0)
    assert [r.skill.ref for r in report.retire] == [debug.ref]
    assert store.get(debug.skill_id).status == "retired"
    assert {r["ref"]: r["uses"] for r in store.stats_rows()}[debug.ref] == 8
    assert rows(s.paths, "SELECT event FROM skill_events") == [{"event": "retired"}]
    store.commit([Change("restored", store.get(debug.skill_id))])
    report, _ = ops.refresh_efficacy(s, store)
    assert report.retire == [] and store.get(debug.skill_id).status == "active"
    lib = SkillLibrary.open(s)
    cand = next(c for c in lib.explain(user("python traceback"), 20) if c["ref"] == debug.ref)
    assert cand["rate"] == pytest.approx(2 / 12, abs=1e-4)  # Beta(2, 2) + 0 successes, 8 failures
