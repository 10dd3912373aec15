"""The held-out split on a real ledger (WAL + DuckDB views), through the trainer's own query
(`training.history.read_candidates`) and the gate's eval-set builder: whole sessions are held out,
a prompt seen in a held-out session is never trained on in another session, and eval prompts are
rebuilt with the skills block the policy was served."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from metaclaw.config import Settings
from metaclaw.deploy.evalset import build_eval_set
from metaclaw.deploy.split import (
    held_out_sql,
    held_out_turn_ids,
    is_eval_session,
    split_fraction,
)
from metaclaw.ledger import append_rows, connect
from metaclaw.ledger.records import now_micros
from metaclaw.training.history import read_candidates
from tests.deploy_helpers import seed_turns
from tests.helpers import rows


def settings_for(home: Path) -> Settings:
    return Settings(home=home, deploy={"eval_fraction": 0.5, "min_eval_prompts": 1})


def session(settings: Settings, held: bool) -> str:
    while True:
        sid = f"sess-{uuid.uuid4().hex}"
        if is_eval_session(sid, settings) == held:
            return sid


def turn_ids(settings: Settings, n: int, *, hashed_in: bool) -> list[str]:
    """Turn ids that a per-turn hash (the old split) would put in (or out of) the held-out side."""
    cfg = settings.deploy
    out: list[str] = []
    while len(out) < n:
        tid = uuid.uuid4().hex
        if (split_fraction(tid, cfg.split_salt) < cfg.eval_fraction) == hashed_in:
            out.append(tid)
    return out


def trainer_view(settings: Settings) -> dict[str, bool]:
    con = connect(settings.paths)
    try:
        found = read_candidates(con, distill=False, held_out_sql=held_out_sql(settings, "t"))
    finally:
        con.close()
    return {r["turn_id"]: bool(r["held_out"]) for r in found}


def test_whole_sessions_and_their_prompts_are_held_out_of_training(home: Path) -> None:
    settings = settings_for(home)
    paths = settings.paths
    held_session, train_session, other_session = (
        session(settings, True),
        session(settings, False),
        session(settings, False),
    )
    # a held-out conversation whose later turns a per-turn hash would have trained on
    conversation = turn_ids(settings, 1, hashed_in=True) + turn_ids(settings, 2, hashed_in=False)
    seed_turns(
        paths,
        conversation,
        ["Plan the trip.", "Now book it.", "Thanks, summarise."],
        session=held_session,
    )
    # a trainable session asking one of the held-out prompts again, and one fresh question
    again, fresh = turn_ids(settings, 2, hashed_in=False)
    seed_turns(
        paths,
        [again, fresh],
        ["Now book it.", "A question nobody held out."],
        session=train_session,
    )
    unique = turn_ids(settings, 3, hashed_in=True)
    seed_turns(paths, unique, ["One.", "Two.", "Three."], session=other_session)

    flags = trainer_view(settings)

    assert {t for t, held in flags.items() if held} == {*conversation, again}
    assert {t for t, held in flags.items() if not held} == {fresh, *unique}
    ledger_rows = rows(
        paths, "SELECT turn_id, session_id, CAST(request AS VARCHAR) AS request FROM turns"
    )
    assert held_out_turn_ids(ledger_rows, settings) == {*conversation, again}  # Python = SQL
    # the gate evaluates exactly the held-out session's prompts
    eval_set = build_eval_set(settings)
    assert sorted(eval_set.turn_ids) == sorted(conversation)


def test_eval_prompts_are_what_the_policy_saw_and_never_a_trained_prompt(home: Path) -> None:
    settings = settings_for(home)
    paths = settings.paths
    block = "## Skills\n- Always answer with a city."
    served = turn_ids(settings, 1, hashed_in=True)
    seed_turns(
        paths, served, ["Where should I go?"], session=session(settings, True), injected_text=block
    )
    plain = turn_ids(settings, 1, hashed_in=True)
    seed_turns(paths, plain, ["Where else?"], session=session(settings, True))
    # trained earlier (e.g. under another split) with a prompt a held-out turn repeats
    trained = turn_ids(settings, 1, hashed_in=False)
    seed_turns(paths, trained, ["Is it far?"], session=session(settings, False))
    repeat = turn_ids(settings, 1, hashed_in=True)
    seed_turns(paths, repeat, ["Is it far?"], session=session(settings, True))
    append_rows(
        paths.wal,
        "train_steps",
        [
            {
                "step_id": "st-1",
                "step": 1,
                "backend": "local",
                "base_model": "m",
                "loss_fn": "ppo",
                "turn_ids": trained,
                "ts": now_micros(),
                "metrics": json.dumps({"status": "ok"}),
            }
        ],
    )

    eval_set = build_eval_set(settings)

    by_id = {p.prompt_id: p for p in eval_set.prompts}
    assert set(by_id) == {*served, *plain}
    assert eval_set.skipped == {"prompt_trained": 1}
    system = by_id[served[0]].messages[0]
    assert system == {"role": "system", "content": f"Be brief.\n\n{block}"}
    assert by_id[plain[0]].messages[0] == {"role": "system", "content": "Be brief."}
