"""The gate on real parts: LoRA checkpoints trained on the tiny model with LocalBackend, the
ledger (WAL + DuckDB), and a stub pairwise judge process that prefers replies saying "Paris".

A candidate trained toward the judge's taste must be promoted; a worse one, an equal one (the
same weights) and anything judged only by position bias must be rejected; a NaN candidate is
never promoted, by the gate or by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from metaclaw.config import LedgerPaths, Settings
from metaclaw.deploy import deployer
from metaclaw.deploy.durable import NotServableError
from metaclaw.deploy.evalset import build_eval_set
from metaclaw.deploy.pairwise import JudgeUnavailableError
from metaclaw.deploy.store import read_book
from metaclaw.ledger import WalWriter, connect
from metaclaw.ledger.records import now_micros
from metaclaw.training.lineage import read_registry
from tests.deploy_helpers import (
    MANY_QUESTIONS,
    aa_sequence,
    add_candidates,
    candidate_row,
    copy_checkpoint,
    deploy_settings,
    eval_turn_ids,
    poison_checkpoint,
    seed_turns,
    statuses,
    train_toward,
)
from tests.helpers import REPO, free_port
from tests.stubs.deploy_server import PairwiseJudgeStub
from tests.tiny_model import save_tiny_model

TWO_WORDS = "Too long. At most two words, please."

torch.set_num_threads(1)
# trains LoRA checkpoints (and starts processes) once per module: ~15-25 s
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def ckpts(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpts")
    good = train_toward(tiny, root, "paris", "Paris")
    return {
        "good": good,
        "blue": train_toward(tiny, root, "blue", "blue"),
        "zero": train_toward(tiny, root, "zero", "-", steps=0),
        "same": copy_checkpoint(good, root / "same"),
        "nan": poison_checkpoint(good, root / "nan"),
    }


@pytest.fixture(scope="module")
def judge() -> Iterator[PairwiseJudgeStub]:
    with PairwiseJudgeStub("prefer:Paris") as stub:
        yield stub


@pytest.fixture()
def stub(judge: PairwiseJudgeStub) -> PairwiseJudgeStub:
    judge.set_mode("prefer:Paris")
    judge.reset()
    return judge


def comment_row(feedback_id: str, turn_id: str, comment: str) -> dict[str, object]:
    return {
        "feedback_id": feedback_id,
        "turn_id": turn_id,
        "session_id": None,
        "value": -1.0,
        "comment": comment,
        "ts": now_micros(),
    }


def setup(home: Path, tiny: Path, judge: PairwiseJudgeStub | None, **deploy: object) -> Settings:
    settings = deploy_settings(home, tiny, judge.base_url if judge else None, free_port(), **deploy)
    seed_turns(settings.paths, eval_turn_ids(settings, 8))
    return settings


def test_a_candidate_trained_toward_the_judge_is_promoted_with_the_full_record(
    home: Path, tiny: Path, ckpts: dict[str, Path], stub: PairwiseJudgeStub
) -> None:
    settings = setup(home, tiny, stub)
    add_candidates(settings.paths, candidate_row("ckpt-good", ckpts["good"], 1))

    outcome = deployer.run_gate(settings)

    assert outcome.status == "promoted", outcome.reason
    ev = outcome.evaluation
    assert ev is not None and ev.baseline.label == "base" and ev.prompts_used == 8
    assert ev.win.n == 8 and ev.win.wins >= 7 and ev.win.low > 0.5
    # the first decision against the base spends α_1 = 0.05·6/π² ≈ 0.0304 of α = 0.05
    assert ev.test.k == 1 and ev.test.alpha_k == pytest.approx(0.0304, abs=1e-4)
    assert ev.test.wins >= 7 and ev.test.significant and ev.test.p_value <= 1 / 2**7
    assert ev.kl is not None and ev.kl.k3 > 0  # it did move away from the base
    # every non-identical pair was judged twice, with the candidate in each position
    judged = [p for p in ev.pairs if not p.identical]
    assert stub.stats()["calls"] == 2 * len(judged) > 0
    assert all(p.first is not None and p.second is not None for p in judged)
    assert sum("Paris" in p.candidate.text for p in ev.pairs) >= 7
    assert outcome.change is not None and outcome.change.notice is not None
    assert outcome.change.notice.status == "unreachable"  # no policy server: promotion stands
    book = read_book(settings.paths)
    ckpt = book.get("ckpt-good")
    assert ckpt.status == "promoted" and ckpt.latest.actor == "deploy-flow"
    recorded = ckpt.latest.eval_metrics
    assert recorded["decision"] == "promote" and recorded["baseline"] == "base"
    assert recorded["eval_set"]["split"] == "session-sha256+prompt/metaclaw-eval-v1/0.5"
    assert recorded["test"]["k"] == 1 and recorded["test"]["significant"] is True
    assert sorted(recorded["eval_set"]["turn_ids"]) == sorted(ev.turn_ids)
    assert len(recorded["pairs"]) == 8 and recorded["pairs"][0]["candidate_as_A"] in "AB tie"
    assert {g["name"] for g in recorded["guards"]} >= {"kl_from_base", "non_finite"}


def test_a_worse_or_equal_candidate_is_rejected(
    home: Path, tiny: Path, ckpts: dict[str, Path], stub: PairwiseJudgeStub
) -> None:
    settings = setup(home, tiny, stub)
    add_candidates(settings.paths, candidate_row("ckpt-good", ckpts["good"], 1))
    deployer.promote(settings, "ckpt-good", actor="test", reason="seed", notify=False)

    add_candidates(settings.paths, candidate_row("ckpt-blue", ckpts["blue"], 2))
    worse = deployer.run_gate(settings)
    assert worse.status == "rejected" and worse.evaluation is not None
    assert worse.evaluation.baseline.label == "ckpt-good"
    assert worse.evaluation.win.win_rate < 0.2 and "not significantly better" in worse.reason
    assert worse.evaluation.test.k == 1 and worse.evaluation.test.losses >= 7

    stub.reset()
    add_candidates(settings.paths, candidate_row("ckpt-same", ckpts["same"], 3))
    equal = deployer.run_gate(settings)
    assert equal.status == "rejected" and equal.evaluation is not None
    assert equal.evaluation.win.win_rate == 0.5  # identical weights → identical replies → ties
    assert all(p.identical for p in equal.evaluation.pairs) and stub.stats()["calls"] == 0
    assert equal.evaluation.test.ties == 8 and equal.evaluation.test.decided == 0
    # the second decision against ckpt-good: its replies came from the cache, α_2 = α_1 / 4
    assert equal.evaluation.test.k == 2 and equal.evaluation.current_cached == 8
    assert statuses(settings.paths) == {
        "ckpt-good": "promoted",
        "ckpt-blue": "rejected",
        "ckpt-same": "rejected",
    }


def test_a_position_biased_judge_cannot_promote_anything(
    home: Path, tiny: Path, ckpts: dict[str, Path], stub: PairwiseJudgeStub
) -> None:
    stub.set_mode("always-a")
    settings = setup(home, tiny, stub)
    add_candidates(settings.paths, candidate_row("ckpt-good", ckpts["good"], 1))
    outcome = deployer.run_gate(settings)
    assert outcome.status == "rejected" and outcome.evaluation is not None
    assert outcome.evaluation.win.win_rate == 0.5 and outcome.evaluation.win.wins == 0


@pytest.mark.parametrize("rules_on", [True, False])
def test_a_rule_users_keep_stating_decides_the_pairs_a_biased_judge_cannot(
    home: Path, tiny: Path, ckpts: dict[str, Path], stub: PairwiseJudgeStub, rules_on: bool
) -> None:
    """Users said "at most two words" about two turns; the candidate answers "Paris" and the
    base rambles. The judge is position-biased (decides nothing), so only the users' rule can
    promote, and only while `deploy.stated_rules` is on."""
    stub.set_mode("always-a")
    settings = deploy_settings(
        home,
        tiny,
        stub.base_url,
        free_port(),
        stated_rules=rules_on,
        eval_size=16,
        max_new_tokens=32,  # the base's garbage runs past two words; "Paris" stops at one
    )
    turns = eval_turn_ids(settings, 16)
    seed_turns(settings.paths, turns, MANY_QUESTIONS[:16])
    with WalWriter(settings.paths.wal) as wal:
        wal.append(
            "feedback", [comment_row(f"c{i}", tid, TWO_WORDS) for i, tid in enumerate(turns[:2])]
        )
    add_candidates(settings.paths, candidate_row("ckpt-good", ckpts["good"], 1))

    outcome = deployer.run_gate(settings)

    ev = outcome.evaluation
    assert ev is not None
    if not rules_on:
        assert outcome.status == "rejected" and ev.stated_rule is None and ev.rule_decided == 0
        return
    assert outcome.status == "promoted", (outcome.reason, [p.current.text for p in ev.pairs])
    assert ev.stated_rule == "at most 2 words" and ev.rule_decided == ev.test.wins >= 6
    # the rule decided those pairs without asking; the judge got only the rest
    judged = sum(1 for p in ev.pairs if not p.identical)
    assert stub.stats()["calls"] == 2 * (judged - ev.rule_decided)
    recorded = read_book(settings.paths).get("ckpt-good").latest.eval_metrics
    assert recorded["judge"]["stated_rule"] == "at most 2 words"
    assert recorded["judge"]["rule_decided"] == ev.rule_decided
    # the reward model decides pairs only with deploy.reward_model_pairs on (off by default)
    assert recorded["judge"]["reward_model"] is None and recorded["judge"]["model_decided"] == 0


def test_repeated_aa_candidates_are_not_promoted_and_a_better_one_still_is(
    home: Path, tiny: Path, ckpts: dict[str, Path], stub: PairwiseJudgeStub, tmp_path: Path
) -> None:
    """A/A: 8 candidates that are the promoted weights plus a no-op or noise-level update,
    against the same promoted policy, judged by a judge that flips a coin whenever the replies
    are equally good: none promoted (the bound: false promotion rate ≤ 5 %). A/B: a candidate
    trained toward the judge's taste is still promoted as the 9th decision, at α_9 ≈ 0.0004."""
    stub.set_mode("noisy:Paris:0")
    settings = deploy_settings(
        home, tiny, stub.base_url, free_port(), eval_size=16, min_eval_prompts=16
    )
    seed_turns(settings.paths, eval_turn_ids(settings, 16), MANY_QUESTIONS[:16])
    add_candidates(settings.paths, candidate_row("ckpt-zero", ckpts["zero"], 1))
    deployer.promote(
        settings, "ckpt-zero", actor="test", reason="the base weights as a LoRA", notify=False
    )

    outcomes = aa_sequence(settings, ckpts["zero"], tmp_path, 8)

    evaluations = [o.evaluation for o in outcomes]
    assert all(ev is not None for ev in evaluations)
    false = sum(o.status == "promoted" for o in outcomes)
    assert false / len(outcomes) <= 0.05, [o.reason for o in outcomes]
    assert [ev.test.k for ev in evaluations] == list(range(1, 9))  # type: ignore[union-attr]
    # not vacuous: the noisy candidates answered differently and the judge decided prompts
    assert sum(ev.test.decided for ev in evaluations) >= 30  # type: ignore[union-attr]
    assert all(ev.current_cached == 16 for ev in evaluations[1:])  # type: ignore[union-attr]
    add_candidates(settings.paths, candidate_row("ckpt-good", ckpts["good"], 50))
    good = deployer.run_gate(settings, notify=False)
    assert good.status == "promoted", good.reason
    assert good.evaluation is not None and good.evaluation.test.k == 9


def test_a_nan_candidate_is_never_promoted(
    home: Path, tiny: Path, ckpts: dict[str, Path], stub: PairwiseJudgeStub
) -> None:
    settings = setup(home, tiny, stub)
    add_candidates(settings.paths, candidate_row("ckpt-nan", ckpts["nan"], 1))
    outcome = deployer.run_gate(settings)
    assert outcome.status == "rejected" and "non-finite" in outcome.reason
    assert stub.stats()["calls"] == 0  # refused before any sampling
    with pytest.raises(NotServableError, match="non-finite"):
        deployer.promote(settings, "ckpt-nan", actor="test", reason="yolo", force=True)
    # finite weights but a diverged training step recorded with the candidate: a guard trips
    add_candidates(
        settings.paths, candidate_row("ckpt-nanloss", ckpts["good"], 2, {"loss": float("nan")})
    )
    diverged = deployer.run_gate(settings)
    assert diverged.status == "rejected" and "non_finite" in diverged.reason
    assert "promoted" not in statuses(settings.paths).values()


def test_the_kl_guard_vetoes_a_winner_that_drifted_too_far(
    home: Path, tiny: Path, ckpts: dict[str, Path], stub: PairwiseJudgeStub
) -> None:
    settings = setup(home, tiny, stub, max_kl=0.05)
    add_candidates(settings.paths, candidate_row("ckpt-good", ckpts["good"], 1))
    outcome = deployer.run_gate(settings)
    assert outcome.status == "rejected" and outcome.reason.startswith("guard tripped: kl_from")
    assert outcome.evaluation is not None and outcome.evaluation.test.significant  # it did win
    # the learner reads the verdict the gate recorded and resets to the promoted policy
    # (training/lineage.py `reset_guard`): the writer's record, read as the trainer reads it
    con = connect(settings.paths)
    try:
        registry = read_registry(con)
    finally:
        con.close()
    assert registry.states["ckpt-good"].guards_tripped == ("kl_from_base",)


def test_without_a_judge_or_enough_prompts_the_candidate_waits(
    home: Path, tiny: Path, ckpts: dict[str, Path], stub: PairwiseJudgeStub
) -> None:
    settings = setup(home, tiny, None)
    add_candidates(settings.paths, candidate_row("ckpt-good", ckpts["good"], 1))
    no_judge = deployer.run_gate(settings)
    assert no_judge.status == "waiting" and "METACLAW_JUDGE__BASE_URL" in no_judge.reason
    few = deployer.run_gate(
        deploy_settings(home, tiny, stub.base_url, free_port(), min_eval_prompts=20)
    )
    assert few.status == "waiting" and "only 8 eval prompts" in few.reason
    assert statuses(settings.paths) == {"ckpt-good": "candidate"}


def test_an_unloadable_promoted_checkpoint_is_replaced_by_the_base_as_yardstick(
    home: Path, tiny: Path, ckpts: dict[str, Path], stub: PairwiseJudgeStub, tmp_path: Path
) -> None:
    settings = setup(home, tiny, stub)
    other_rank = train_toward(tiny, tmp_path, "r8", "blue", steps=2, rank=8)
    add_candidates(
        settings.paths,
        candidate_row("ckpt-r8", other_rank, 1),
        candidate_row("ckpt-good", ckpts["good"], 2),
    )
    deployer.promote(settings, "ckpt-r8", actor="test", reason="older config", notify=False)
    outcome = deployer.run_gate(settings, "ckpt-good")
    assert outcome.status == "promoted", outcome.reason
    assert outcome.evaluation is not None and outcome.evaluation.baseline.label == "base"
    assert "ckpt-r8 could not be sampled" in outcome.evaluation.notes[0]
    assert statuses(settings.paths) == {"ckpt-r8": "superseded", "ckpt-good": "promoted"}


def test_a_failing_or_unreadable_judge_leaves_the_candidate_waiting(
    home: Path, tiny: Path, ckpts: dict[str, Path], stub: PairwiseJudgeStub
) -> None:
    settings = setup(home, tiny, stub)
    add_candidates(settings.paths, candidate_row("ckpt-good", ckpts["good"], 1))
    stub.set_mode("e500")
    with pytest.raises(JudgeUnavailableError, match="stub judge scripted error 500"):
        deployer.run_gate(settings)  # the flow's task fails and is retried
    stub.set_mode("garbage")
    outcome = deployer.run_gate(settings)
    assert outcome.status == "waiting" and "no readable verdict for 8 of 8" in outcome.reason
    assert statuses(settings.paths) == {"ckpt-good": "candidate"}


def test_older_candidates_are_superseded_and_a_rerun_writes_nothing(
    home: Path, tiny: Path, ckpts: dict[str, Path], stub: PairwiseJudgeStub
) -> None:
    settings = setup(home, tiny, stub)
    add_candidates(
        settings.paths,
        candidate_row("ckpt-1", ckpts["blue"], 1),
        candidate_row("ckpt-2", ckpts["good"], 2),
    )
    outcome = deployer.run_gate(settings)
    assert outcome.status == "promoted" and outcome.checkpoint_id == "ckpt-2"
    assert outcome.superseded == ["ckpt-1"]
    assert statuses(settings.paths) == {"ckpt-1": "rejected", "ckpt-2": "promoted"}
    rows = len(read_book(settings.paths).get("ckpt-2").events)
    again = deployer.run_gate(settings)
    assert again.status == "idle" and len(read_book(settings.paths).get("ckpt-2").events) == rows


def test_the_eval_set_is_held_out_scored_untrained_and_newest_first(home: Path, tiny: Path) -> None:
    settings = deploy_settings(home, tiny, None, free_port(), eval_size=4)
    paths = LedgerPaths(home)
    held = eval_turn_ids(settings, 6)
    seed_turns(paths, held)
    seed_turns(paths, eval_turn_ids(settings, 5, held_out=False))  # training turns
    seed_turns(paths, eval_turn_ids(settings, 3), reward=None)  # held out but never scored
    from metaclaw.ledger import append_rows

    append_rows(
        paths.wal,
        "train_steps",
        [
            {
                "step_id": "s1",
                "step": 1,
                "turn_ids": [held[-1]],
                "metrics": json.dumps({"status": "ok"}),
                "ts": 1,
            }
        ],
    )
    chosen = build_eval_set(settings)
    assert chosen.turn_ids == list(reversed(held[1:5]))  # newest first, the trained one left out
    prompts = home / "prompts.jsonl"
    prompts.write_text('{"prompt": "Fixed question?"}\n')
    with_file = build_eval_set(
        deploy_settings(home, tiny, None, free_port(), eval_size=4, prompts_file=str(prompts))
    )
    assert [p.source for p in with_file.prompts] == ["ledger"] * 4 + ["file"]


def test_the_cli_runs_the_gate_and_shows_the_verdict(
    home: Path, tiny: Path, ckpts: dict[str, Path], stub: PairwiseJudgeStub
) -> None:
    settings = setup(home, tiny, stub)
    add_candidates(settings.paths, candidate_row("ckpt-good", ckpts["good"], 1))
    env = {
        **os.environ,
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(home / "none.toml"),
        "METACLAW_TRAINING__BASE_MODEL": str(tiny),
        "METACLAW_TRAINING__LORA_RANK": "4",
        "METACLAW_TRAINING__DEVICE": "cpu",
        "METACLAW_JUDGE__BASE_URL": stub.base_url,
        "METACLAW_JUDGE__MODEL": "stub-pairwise",
        "METACLAW_POLICY__PORT": str(settings.policy.port),
        "METACLAW_DEPLOY__MAX_NEW_TOKENS": "12",
        "METACLAW_DEPLOY__MIN_EVAL_PROMPTS": "6",
        "METACLAW_DEPLOY__EVAL_FRACTION": "0.5",
        "METACLAW_DEPLOY__MAX_KL": "1000",
        "OMP_NUM_THREADS": "1",
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "metaclaw", "checkpoints", *args],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = cli("evaluate")
    assert done.returncode == 0, done.stderr
    assert "promoted ckpt-good" in done.stdout and "unreachable" in done.stdout
    shown = json.loads(cli("show", "ckpt-good", "--json").stdout)
    assert [h["status"] for h in shown["history"]] == ["candidate", "promoted"]
    assert shown["evaluation"]["decision"] == "promote"
    table = cli("show", "ckpt-good")
    assert "guard kl_from_base: ok" in table.stdout and "→ promote" in table.stdout
    assert "sign test: " in table.stdout and "vs α_1=0.0304" in table.stdout
