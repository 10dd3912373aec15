"""The learner follows the checkpoint registry (issue 14, fault 1) and only importance-weights
turns its own recent lineage served (fault 2): the real trainer on a real ledger (WAL + DuckDB).

The registry's rows are appended as the deploy side writes them (append-only, the latest row per
checkpoint is its state); the backend is the in-process bigram stand-in for the hosted trainer,
a fresh one per load so "reset to the base model" really is the base model.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

from metaclaw.config import LedgerPaths, Settings
from metaclaw.ledger import append_rows
from metaclaw.ledger.records import now_micros
from metaclaw.training.trainer import StepOutcome, Trainer
from tests.helpers import gate_record, rows
from tests.integration.test_training_flow import Seeder, settings_for, steps
from tests.stubs.training_fake import BigramBackend
from tests.tiny_model import build_tokenizer

TOK = build_tokenizer()


def fresh(settings: Settings) -> BigramBackend:
    return BigramBackend(
        len(TOK),
        checkpoint_dir=settings.paths.checkpoints,
        tokenizer=TOK,
        eos_token_id=TOK.eos_token_id,
    )


def mark(paths: LedgerPaths, checkpoint_id: str, status: str, **fields: Any) -> None:
    """One registry row, as metaclaw.deploy appends it."""
    append_rows(
        paths.wal,
        "checkpoints",
        [
            {
                "event_id": hashlib.sha256(uuid.uuid4().bytes).hexdigest()[:32],
                "checkpoint_id": checkpoint_id,
                "status": status,
                "ts": now_micros(),
                "actor": "test",
                "reason": f"test: {status}",
                **fields,
            }
        ],
    )


def promote(paths: LedgerPaths, checkpoint_id: str, previous: str | None = None) -> None:
    if previous:
        mark(paths, previous, "superseded")
    mark(paths, checkpoint_id, "promoted", previous_checkpoint_id=previous)


class Loop:
    """A trainer on SFT data (upstream turns, reward 1): every step is possible, no KL."""

    def __init__(self, home: Path, **training: Any) -> None:
        self.paths = LedgerPaths(home)
        self.seed = Seeder(self.paths)
        self.settings = settings_for(home, batch_size=2, **training)
        self.trainer = Trainer(self.settings, backend_factory=fresh)

    def step(self) -> StepOutcome:
        self.seed.upstream([1.0, 1.0])
        return self.trainer.step()

    def trained(self) -> StepOutcome:
        outcome = self.step()
        assert outcome.status == "trained", outcome.reason
        return outcome


def state_of(outcome: StepOutcome) -> str:
    return outcome.metrics["state_path"]


def test_a_rollback_resets_the_learner_to_the_restored_checkpoint(home: Path) -> None:
    loop = Loop(home)
    c1 = loop.trained()
    promote(loop.paths, c1.checkpoint_id)
    c2 = loop.trained()
    assert c2.metrics["parent_state_path"] == state_of(c1)
    promote(loop.paths, c2.checkpoint_id, previous=c1.checkpoint_id)
    c3 = loop.trained()
    assert c3.metrics["parent_state_path"] == state_of(c2)
    # `metaclaw checkpoints rollback`: c2 rolled back, c1 restored
    mark(loop.paths, c2.checkpoint_id, "rolled_back")
    mark(loop.paths, c1.checkpoint_id, "promoted")
    c4 = loop.trained()
    assert c4.metrics["parent_state_path"] == state_of(c1), "c3 sits on the rolled-back c2"
    assert c4.metrics["lineage"]["rule"] == "reset_rollback"
    assert c4.metrics["lineage"]["checkpoint_id"] == c1.checkpoint_id


def test_a_guard_rejection_resets_and_a_plain_one_keeps_accumulating(home: Path) -> None:
    loop = Loop(home)
    c1 = loop.trained()
    mark(
        loop.paths,
        c1.checkpoint_id,
        "rejected",
        eval_metrics=json.dumps({"win": {"win_rate": 0.5}, **gate_record([])}),
    )  # a tie: not worse, just not better
    c2 = loop.trained()
    assert c2.metrics["parent_state_path"] == state_of(c1)
    assert c2.metrics["lineage"]["rule"] == "continue"
    mark(
        loop.paths,
        c2.checkpoint_id,
        "rejected",
        eval_metrics=json.dumps({"win": {"win_rate": 0.2}, **gate_record(["kl_from_base"])}),
    )
    c3 = loop.trained()
    assert c3.metrics["parent_state_path"].startswith("base:"), "reset to the base model"
    assert c3.metrics["lineage"]["rule"] == "reset_guard"


def test_drift_above_the_promoted_checkpoint_is_bounded(home: Path) -> None:
    loop = Loop(home, max_unpromoted_steps=2)
    c1 = loop.trained()
    promote(loop.paths, c1.checkpoint_id)
    c2 = loop.trained()
    c3 = loop.trained()
    assert c3.metrics["parent_state_path"] == state_of(c2)
    c4 = loop.trained()  # c2, c3 unpromoted above c1: the bound
    assert c4.metrics["parent_state_path"] == state_of(c1)
    assert c4.metrics["lineage"]["rule"] == "reset_drift"


def test_a_promoted_checkpoint_without_a_training_state_stalls_loudly(home: Path) -> None:
    loop = Loop(home)
    loop.trained()
    promote(loop.paths, "ckpt-from-elsewhere")
    waiting = loop.seed.upstream([1.0, 1.0])
    stalled = loop.trainer.step()
    assert stalled.status == "stalled" and "ckpt-from-elsewhere" in stalled.reason
    again = loop.trainer.step()
    assert again.status == "stalled"
    rows_ = steps(loop.paths)
    stall_rows = [r for r in rows_ if r["metrics"]["status"] == "stalled"]
    assert len(stall_rows) == 1, "one event per cause, not one per run"
    assert stall_rows[0]["turn_ids"] == []
    consumed = {t for r in rows_ for t in r["turn_ids"]}
    assert not consumed & set(waiting), "a stalled learner consumes no turns"


def test_repeated_failures_stall_instead_of_quarantining_everything(home: Path) -> None:
    paths = LedgerPaths(home)
    seed = Seeder(paths)
    trainer = Trainer(settings_for(home), backend_factory=fresh)  # stall_after_failures 3
    base = fresh(trainer.settings)
    for _ in range(3):  # logprobs that no policy of this lineage produced: the KL guard fails
        seed.policy(base, [1.0, -1.0, 1.0, -1.0], corrupt=-0.001)
        assert trainer.step().status == "failed"
    kept = seed.policy(base, [1.0, -1.0, 1.0, -1.0], corrupt=-0.001)
    outcome = trainer.step()
    assert outcome.status == "stalled" and "3 consecutive steps" in outcome.reason
    consumed = {t for r in steps(paths) for t in r["turn_ids"]}
    assert not consumed & set(kept), "the fourth batch is kept for when the cause is fixed"
    status = rows(paths, "SELECT metrics->>'status' AS s FROM train_steps ORDER BY step")
    assert [r["s"] for r in status] == ["failed", "failed", "failed", "stalled"]


def test_only_the_learners_recent_lineage_is_importance_weighted(home: Path) -> None:
    paths = LedgerPaths(home)
    seed = Seeder(paths)
    settings = settings_for(home, batch_size=2, max_staleness=0, max_unpromoted_steps=1)
    trainer = Trainer(settings, backend_factory=fresh)
    seed.upstream([1.0, 1.0])
    c1 = trainer.step()
    promote(paths, c1.checkpoint_id)
    seed.upstream([1.0, 1.0])
    c2 = trainer.step()  # learner at c1 → c2; max_unpromoted 1: next step resets to c1
    assert c2.status == "trained"
    served = fresh(settings)
    served.load_state(state_of(c1))
    own = seed.policy(served, [1.0, -1.0], checkpoint=c1.checkpoint_id)
    seed.policy(served, [1.0, -1.0], checkpoint=c2.checkpoint_id)  # off the lineage now
    seed.policy(served, [1.0, 0.9], checkpoint="ckpt-of-another-run")
    seed.policy(served, [0.9, 0.8])  # the base model: one step behind c1, K = 0
    seed.policy(served, [0.9, -0.5], checkpoint=c1.checkpoint_id, sampling_top_p=0.9)
    trainer.settings.training.batch_size = 8  # every usable turn in one step
    outcome = trainer.step()
    assert outcome.status == "trained", outcome.reason
    m = outcome.metrics
    assert m["parent_state_path"] == state_of(c1) and m["lineage"]["rule"] == "reset_drift"
    assert m["staleness"] == {t: 0 for t in own}, "only turns c1 served are importance-weighted"
    assert m["n_rl"] == 2 and m["n_sft"] == 6  # the others are SFT data when good enough
    assert m["routed"] == {"other_lineage": 4, "stale_policy": 2, "sampling_mismatch": 2}


def test_the_two_kl_guards_ask_different_questions(home: Path) -> None:
    """Before the update: did the turns come from this learner (healthy ≈ 0)? After it: did the
    step diverge (a healthy step moves its own batch far more)? One limit for both would either
    miss foreign logprobs or fail healthy steps."""
    paths = LedgerPaths(home)
    seed = Seeder(paths)
    settings = settings_for(home, learning_rate=0.05, max_kl=1e-3)
    trainer = Trainer(settings, backend_factory=fresh)
    seed.policy(fresh(settings), [1.0, -1.0, 1.0, -1.0])
    healthy = trainer.step()
    assert healthy.status == "trained", healthy.reason
    m = healthy.metrics
    assert max(abs(m["kl"]), m["kl_v2"]) < 1e-6  # served by this very state
    assert max(abs(m["kl_after"]), m["kl_v2_after"]) > settings.training.max_kl
    # the same step against a limit below its size: discarded as diverging, nothing saved
    strict = settings_for(home / "strict", learning_rate=0.05, max_update_kl=1e-3)
    Seeder(LedgerPaths(home / "strict")).policy(fresh(strict), [1.0, -1.0, 1.0, -1.0])
    diverged = Trainer(strict, backend_factory=fresh).step()
    assert diverged.status == "failed" and "training.max_update_kl" in diverged.reason
