"""The held-out split in Python and in DuckDB: by session, stable, the right size, and the prompt
digest identical in both (the trainer filters in SQL, tests and tools reason in Python)."""

from __future__ import annotations

import json
import uuid

import duckdb

from metaclaw.config import DeploySettings, Settings
from metaclaw.deploy.split import (
    eval_session_sql,
    is_eval_session,
    prompt_digest,
    prompt_digest_sql,
    split_fraction,
    split_id,
)

REQUESTS = [
    {
        "messages": [
            {"role": "system", "content": "Be  Brief."},
            {"role": "user", "content": "Hi\tTHERE\n"},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "be brief."},
            {"role": "user", "content": "hi  there "},
        ]
    },  # the same prompt, normalised
    {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "A"},
                    {"type": "image"},
                    "x",
                    {"text": 5},
                    {"text": "b"},
                ],
            }
        ]
    },
    {
        "system": [{"type": "text", "text": "SYS"}],
        "messages": [{"role": "user", "content": "é Ü\u00a0x 😀 \u2003 q"}],
    },
    {"system": "SYS", "messages": [{"role": "user", "content": "é Ü\u00a0x 😀 \u2003 q"}]},
    {"system": None, "messages": "nope"},
    [1, 2],
    {},
    {"messages": [5, {"role": 3, "content": None}, {"role": "tool", "content": "ok"}]},
    {"messages": [{"role": "user", "content": "hi there"}]},  # another prompt: no system
]


def test_sessions_split_stably_at_the_right_size_and_the_same_in_sql() -> None:
    cfg = DeploySettings(eval_fraction=0.2, split_salt="s1")
    ids = [uuid.UUID(int=i).hex for i in range(4000)]
    held = {s for s in ids if is_eval_session(s, cfg)}
    assert 0.17 < len(held) / len(ids) < 0.23
    assert held == {s for s in ids if is_eval_session(s, Settings(deploy=cfg))}  # either form
    other = {
        s for s in ids if is_eval_session(s, DeploySettings(eval_fraction=0.2, split_salt="s2"))
    }
    assert other != held
    assert split_fraction("abc", "s1") == split_fraction("abc", "s1")
    con = duckdb.connect()
    con.execute("CREATE TABLE t (session_id VARCHAR)")
    con.executemany("INSERT INTO t VALUES (?)", [[s] for s in ids])
    in_sql = {
        r[0]
        for r in con.execute(f"SELECT session_id FROM t WHERE {eval_session_sql(cfg)}").fetchall()
    }
    assert in_sql == held
    assert not any(is_eval_session(s, DeploySettings(eval_fraction=0.0)) for s in ids[:200])
    assert split_id(cfg) == "session-sha256+prompt/s1/0.2"


def test_prompt_digests_agree_between_python_and_duckdb() -> None:
    raw = [json.dumps(r) for r in REQUESTS] + ["not json", None]
    con = duckdb.connect()
    con.execute("CREATE TABLE r (i INTEGER, request VARCHAR)")
    con.executemany("INSERT INTO r VALUES (?, ?)", list(enumerate(raw)))
    in_sql = dict(con.execute(f"SELECT i, {prompt_digest_sql('request')} FROM r").fetchall())
    in_py = {i: prompt_digest(r) for i, r in enumerate(raw)}
    assert in_sql == in_py
    # ... and on the JSON type the ledger views use
    as_json = dict(
        con.execute(
            f"SELECT i, {prompt_digest_sql('CAST(request AS JSON)')} "
            "FROM r WHERE json_valid(request)"
        ).fetchall()
    )
    assert as_json == {i: d for i, d in in_py.items() if i in as_json}
    assert in_py[0] == in_py[1] is not None  # case and whitespace are folded
    assert in_py[3] == in_py[4] is not None  # an Anthropic system as a string or as blocks
    assert in_py[1] != in_py[9]  # the system prompt is part of the prompt
    assert len({in_py[0], in_py[2], in_py[3], in_py[8], in_py[9]}) == 5
    assert in_py[5] is in_py[6] is in_py[7] is in_py[10] is in_py[11] is None  # no prompt text
    assert prompt_digest(REQUESTS[0]) == in_py[0]  # parsed or raw
