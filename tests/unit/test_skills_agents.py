"""Per-agent skill libraries without a database: skill ids per agent, the index's filter by
library (flat and IVF, before the top-k so another library cannot crowd one out), and evolution
that clusters, dedups and writes within the failing agent's library only."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from metaclaw.skills.embedding import StaticEmbedder, get_embedder
from metaclaw.skills.evolution import (
    EvolveAnswer,
    PendingDiagnosis,
    Planner,
    Proposal,
    cluster,
    nearest_skills,
)
from metaclaw.skills.index import BLOCK_HEADER, SkillIndex, build_entries, terms
from metaclaw.skills.model import Skill, skill_id_for
from metaclaw.skills.tables import row_to_skill, skill_to_row
from tests.skills_helpers import EMBEDDINGS, make_skill

Embed = Callable[[list[str]], np.ndarray]


@pytest.fixture(scope="module")
def embedder() -> StaticEmbedder:
    return get_embedder("static-minilm", EMBEDDINGS)


def test_skill_ids_are_per_agent_and_the_default_agents_are_unchanged() -> None:
    legacy = "sk-" + hashlib.sha256(b"answer_in_json").hexdigest()[:16]
    assert skill_id_for("answer-in-json") == legacy, "ids of libraries before agents are kept"
    assert Skill("answer_in_json", "d", "i").skill_id == legacy
    coder = Skill("answer_in_json", "d", "i", agent_id="coder")
    writer = Skill("answer_in_json", "d", "i", agent_id="writer")
    assert len({legacy, coder.skill_id, writer.skill_id}) == 3
    assert coder.skill_id == skill_id_for("answer-in-json", "coder")


def test_a_row_keeps_its_agent_and_a_row_without_one_is_the_default_agents() -> None:
    row = skill_to_row(make_skill("translate_text", agent_id="coder"))
    assert row_to_skill(row).agent_id == "coder"
    assert row_to_skill({**row, "agent_id": None}).agent_id == "default"
    del row["agent_id"]
    assert row_to_skill(row).agent_id == "default"


def _index(embedder: StaticEmbedder, skills: list[Skill], ivf_min: int) -> SkillIndex:
    return SkillIndex(
        build_entries([skill_to_row(s) for s in skills], {}, embedder.count_tokens),
        embedder.embed([s.search_text for s in skills]),
        [s.search_text for s in skills],
        skill_set_version=1,
        header_tokens=embedder.count_tokens([BLOCK_HEADER])[0],
        ivf_min=ivf_min,
    )


def _chosen(
    index: SkillIndex,
    embedder: StaticEmbedder,
    query: str,
    libraries: tuple[str, ...],
    top_k: int,
) -> list[str]:
    """The refs the proxy's selection injects for a turn that reads these libraries."""
    allowed = index.allowed(libraries)
    cands = index.candidates(
        embedder.embed_one(query), terms(query), text_weight=0.3, prior=(2.0, 2.0), allowed=allowed
    )
    return list(
        index.select(
            cands, top_k=top_k, min_similarity=0.1, token_budget=2000, allowed=allowed
        ).refs
    )


@pytest.mark.parametrize("ivf_min", [20_000, 50], ids=["flat", "ivf"])
def test_the_index_serves_only_the_libraries_a_turn_reads(
    embedder: StaticEmbedder, ivf_min: int
) -> None:
    """300 of `crowd`'s skills match the query better than `mine`'s one: unfiltered they fill
    every candidate slot; filtered by library, `mine`'s skill is still found."""
    base = make_skill("debug_python_exceptions", agent_id="crowd")
    crowd = [
        replace(base, name=f"{base.name}_{i}", skill_id=skill_id_for(f"{base.name}_{i}", "crowd"))
        for i in range(300)
    ]
    mine = make_skill(
        "debug_python_exceptions",
        description="Fix a crashing Python program.",
        when_to_use="A program stops with an error.",
        agent_id="mine",
    )
    index = _index(embedder, [*crowd, mine], ivf_min)
    assert (index.vectors.centroids is not None) == (ivf_min == 50)
    query = "my python script crashes with a traceback"

    def served(libraries: tuple[str, ...]) -> set[str]:
        refs = _chosen(index, embedder, query, libraries, top_k=3)
        return {index.entries[index.by_ref[r]].agent_id for r in refs}

    assert served(("mine",)) == {"mine"}
    assert served(("crowd",)) == {"crowd"}
    assert served(("other",)) == set()
    assert served(("mine", "crowd")) == {"crowd"}, "sharing reads the other library too"
    assert index.allowed(("mine", "crowd")) is None, "every library read: no filter at all"
    assert index.allowed(("mine",)) is index.allowed(("mine",)), "computed once per snapshot"


def test_a_parent_from_a_library_the_turn_does_not_read_is_left_out(
    embedder: StaticEmbedder,
) -> None:
    parent = make_skill("write_sql_queries", agent_id="other")
    child = make_skill("debug_python_exceptions", agent_id="mine", composes=(parent.skill_id,))
    index = _index(embedder, [parent, child], 20_000)
    query = "python traceback crash"
    for libraries, expected in ((("mine",), [child.ref]), (("mine", "other"), None)):
        refs = _chosen(index, embedder, query, libraries, top_k=1)
        assert refs == (expected or [parent.ref, child.ref])


def _planner(embedder: StaticEmbedder, active: list[Skill]) -> Planner:
    return Planner(
        active,
        {s.ref: embedder.embed([s.search_text])[0] for s in active},
        embedder.embed,
        author="critic-x",
        dedup_similarity=0.92,
        max_instruction_chars=4000,
        max_new=5,
        latest=active,
    )


def _proposal(agent: str, action: str, shown: list[str], **answer: object) -> Proposal:
    answer_model = EvolveAnswer.model_validate({"action": action, **answer})
    return Proposal(["d-" + agent], shown, answer_model, agent_id=agent)


def test_evolution_writes_only_to_the_failing_agents_library(embedder: StaticEmbedder) -> None:
    theirs = make_skill("translate_text", author="critic-x", agent_id="coder")
    p = _planner(embedder, [theirs])
    same = {
        "name": theirs.name,
        "description": theirs.description,
        "when_to_use": theirs.when_to_use,
        "instructions": "Ask which language first.",
    }
    p.add(_proposal("helper", "create", [], skill=same))
    (created,) = p.outcome.changes
    assert (created.event, created.skill.agent_id, created.skill.version) == (
        "created",
        "helper",
        1,
    ), "the same name and text in another library is neither revised nor a duplicate"
    assert created.skill.skill_id == skill_id_for(theirs.name, "helper") != theirs.skill_id

    q = _planner(embedder, [theirs])
    q.add(
        _proposal(
            "helper", "revise", [theirs.skill_id], target_skill_id=theirs.skill_id, skill=same
        )
    )
    assert q.outcome.changes == [] and "not shown or is not active" in q.outcome.rejected[0][1]

    own = _planner(embedder, [theirs])
    own.add(_proposal("coder", "create", [], skill={**same, "name": "translate_texts"}))
    (revised,) = own.outcome.changes
    assert (revised.event, revised.skill.skill_id) == ("updated", theirs.skill_id), (
        "within its own library a near-duplicate still revises the existing skill"
    )


def test_clusters_and_the_critics_view_stay_within_one_agent(embedder: StaticEmbedder) -> None:
    text = "The read tool was called without a path."
    ds = [
        PendingDiagnosis("a", "tool_misuse", text, "", ("t1",), agent_id="coder"),
        PendingDiagnosis("b", "tool_misuse", text, "", ("t2",), agent_id="helper"),
        PendingDiagnosis("c", "tool_misuse", text, "", ("t3",), agent_id="coder"),
    ]
    groups = cluster(ds, embedder.embed)
    assert [[d.diagnosis_id for d in g] for g in groups] == [["a", "c"], ["b"]]
    coder = make_skill("debug_python_exceptions", agent_id="coder")
    helper = replace(make_skill("debug_python_exceptions", agent_id="helper"))
    vectors = {s.ref: embedder.embed([s.search_text])[0] for s in (coder, helper)}
    shown = nearest_skills(groups[1], [coder, helper], vectors, embedder.embed)
    assert [s.agent_id for s in shown] == ["helper"]
