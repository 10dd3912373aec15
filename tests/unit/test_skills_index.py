"""Ranking, minimum similarity, the token budget and composition in the in-memory index."""

from __future__ import annotations

import numpy as np
import pytest

from metaclaw.skills.embedding import StaticEmbedder, get_embedder, sif_weights
from metaclaw.skills.index import BLOCK_HEADER, Bm25, SkillIndex, VectorIndex, build_entries, terms
from tests.skills_helpers import EMBEDDINGS, SKILLS, make_skill


@pytest.fixture(scope="module")
def embedder() -> StaticEmbedder:
    return get_embedder("static-minilm", EMBEDDINGS)


def index_of(
    embedder: StaticEmbedder,
    names: list[str],
    stats: dict | None = None,
    composes: dict[str, list[str]] | None = None,
    ivf_min: int = 20_000,
) -> SkillIndex:
    skills = [make_skill(n) for n in names]
    ids = {s.name: s.skill_id for s in skills}
    rows = [
        {
            "row_id": s.ref,
            "skill_id": s.skill_id,
            "version": s.version,
            "name": s.name,
            "when_to_use": s.when_to_use,
            "instructions": s.instructions,
            "composes": [ids[p] for p in (composes or {}).get(s.name, [])],
        }
        for s in skills
    ]
    refs = {s.name: s.ref for s in skills}
    entries = build_entries(
        rows, {refs[n]: v for n, v in (stats or {}).items()}, embedder.count_tokens
    )
    vectors = embedder.embed([s.search_text for s in skills])
    header = embedder.count_tokens([BLOCK_HEADER])[0]
    return SkillIndex(
        entries,
        vectors,
        [s.search_text for s in skills],
        skill_set_version=7,
        header_tokens=header,
        ivf_min=ivf_min,
    )


def rank(index: SkillIndex, embedder: StaticEmbedder, query: str, **kw: object) -> list[str]:
    cands = index.candidates(
        embedder.embed_one(query), terms(query), text_weight=0.3, prior=(2.0, 2.0)
    )
    chosen = index.select(cands, **{"top_k": 3, "min_similarity": 0.25, "token_budget": 800, **kw})
    return [index.entries[[e.ref for e in index.entries].index(r)].name for r in chosen.refs]


def test_embeddings_are_normalised_and_meaningful(embedder: StaticEmbedder) -> None:
    a, b, c = embedder.embed(
        ["The cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly revenue grew 5%."]
    )
    assert abs(float(np.linalg.norm(a)) - 1) < 1e-5
    assert float(a @ b) > float(a @ c) + 0.3
    w = sif_weights(30522)
    assert w[1996] < w[5000] < w[30000]  # "the" weighs least


def test_relevant_skill_wins_over_an_irrelevant_popular_one(embedder: StaticEmbedder) -> None:
    stats = {"schedule_meetings": (95.0, 5.0)}  # very successful, but about something else
    index = index_of(embedder, list(SKILLS), stats=stats)
    got = rank(index, embedder, "my python script crashes with a KeyError traceback", top_k=1)
    assert got == ["debug_python_exceptions"]
    assert rank(index, embedder, "set up a call with the London team next week", top_k=1) == [
        "schedule_meetings"
    ]


def test_success_rate_breaks_near_ties(embedder: StaticEmbedder) -> None:
    index = index_of(
        embedder,
        ["debug_python_exceptions", "write_sql_queries"],
        stats={"debug_python_exceptions": (0.0, 60.0)},
    )
    cands = index.candidates(
        embedder.embed_one("python exception"),
        terms("python exception"),
        text_weight=0.3,
        prior=(2.0, 2.0),
    )
    debug = next(c for c in cands if index.entries[c.position].name == "debug_python_exceptions")
    assert debug.rate == pytest.approx(2 / 64)
    assert debug.score == pytest.approx(debug.similarity * 2 / 64)


def test_minimum_similarity_keeps_unrelated_requests_clean(embedder: StaticEmbedder) -> None:
    index = index_of(embedder, list(SKILLS))
    assert rank(index, embedder, "hello there!") == []
    assert rank(index, embedder, "python traceback", min_similarity=0.99) == []


def test_token_budget_is_respected(embedder: StaticEmbedder) -> None:
    index = index_of(embedder, list(SKILLS))
    query = "python error, sql join and a git conflict"
    cands = index.candidates(
        embedder.embed_one(query), terms(query), text_weight=0.3, prior=(2.0, 2.0)
    )
    full = index.select(cands, top_k=6, min_similarity=0.0, token_budget=10_000)
    assert len(full.refs) == 6
    one = index.entries[0].tokens + index.header_tokens
    tight = index.select(cands, top_k=6, min_similarity=0.0, token_budget=one + 5)
    assert 1 <= len(tight.refs) < 6 and tight.tokens <= one + 5
    assert embedder.count_tokens([tight.block])[0] <= one + 5 + 4  # joins add ≤ a few tokens
    assert index.select(cands, top_k=6, min_similarity=0.0, token_budget=3).refs == []


def test_composed_skill_brings_its_parent_first(embedder: StaticEmbedder) -> None:
    index = index_of(embedder, list(SKILLS), composes={"git_merge_conflicts": ["translate_text"]})
    names = rank(index, embedder, "git says CONFLICT after I pulled", top_k=1)
    assert names == ["translate_text", "git_merge_conflicts"]
    block = index.select(
        index.candidates(
            embedder.embed_one("git CONFLICT after pull"),
            terms("git CONFLICT after pull"),
            text_weight=0.3,
            prior=(2.0, 2.0),
        ),
        top_k=1,
        min_similarity=0.25,
        token_budget=800,
    ).block
    assert block.index("Skill translate_text (") < block.index("Skill git_merge_conflicts (")


def test_ivf_finds_what_flat_search_finds() -> None:
    rng = np.random.default_rng(1)  # clustered, like topics of skills
    centers = rng.standard_normal((60, 384)).astype(np.float32)
    x = centers[rng.integers(0, 60, 5000)] + 0.08 * rng.standard_normal((5000, 384))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    flat, ivf = VectorIndex(x, ivf_min=10**9), VectorIndex(x, ivf_min=100, nprobe=24)
    assert ivf.centroids is not None and flat.centroids is None
    hits = 0
    for i in range(50):
        q = x[i] + 0.02 * rng.standard_normal(384).astype(np.float32)
        q /= np.linalg.norm(q)
        hits += int(flat.search(q, 1)[0][0] == ivf.search(q, 1)[0][0])
    assert hits >= 45
    assert np.allclose(ivf.cosine(x[3], np.array([3, 7])), x[[3, 7]] @ x[3], atol=1e-5)


def test_bm25_rewards_rare_terms_and_ignores_stop_words() -> None:
    bm = Bm25([terms("python traceback error"), terms("error message"), terms("sql join")])
    scores = bm.scores(terms("the python error"))
    assert scores is not None and scores[0] > scores[1] > 0 and scores[2] == 0
    assert bm.scores(terms("the and of")) is None
