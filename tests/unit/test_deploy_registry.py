"""The checkpoint registry: the transition table, one promoted at a time, rollback as a stack."""

from __future__ import annotations

import itertools

import pytest

from metaclaw.deploy.registry import (
    STATUSES,
    TRANSITIONS,
    Book,
    TransitionError,
    UnknownCheckpointError,
    check_transition,
    plan_promote,
    plan_reject,
    plan_rollback,
)

ACTIONS = ("gate", "manual", "override", "supersede", "rollback", "restore")


def candidate(cid: str, step: int, ts: int) -> dict:
    return {
        "event_id": f"c-{cid}",
        "checkpoint_id": cid,
        "step": step,
        "backend": "local",
        "path": f"/ckpt/{cid}",
        "status": "candidate",
        "ts": ts,
        "reason": 'trained: {"loss": 1.5, "kl": 0.001}',
    }


class Ledger:
    """Rows appended so far; each plan is applied the way the WAL would land it."""

    def __init__(self, *cids: str) -> None:
        self.rows = [candidate(c, i + 1, 1_000 + i) for i, c in enumerate(cids)]
        self.now = 10_000

    @property
    def book(self) -> Book:
        return Book(self.rows)

    def apply(self, rows: list[dict]) -> list[dict]:
        self.rows += rows
        self.now += 10
        return rows

    def promote(self, cid: str, action: str = "gate", **kw: object) -> list[dict]:
        return self.apply(
            plan_promote(
                self.book, cid, action=action, actor="test", reason="r", now=self.now, **kw
            )
        )

    def rollback(self):  # type: ignore[no-untyped-def]
        plan = plan_rollback(self.book, actor="ops", reason="bad", now=self.now)
        self.apply(plan.rows)
        return plan

    def status(self) -> dict[str, str]:
        return {cid: c.status for cid, c in self.book.checkpoints.items()}


def test_the_table_is_the_only_authority() -> None:
    for current, target, action in itertools.product(STATUSES, STATUSES, ACTIONS):
        allowed = action in TRANSITIONS.get((current, target), frozenset())
        if allowed:
            check_transition("x", current, target, action)
        else:
            with pytest.raises(TransitionError):
                check_transition("x", current, target, action)


def test_invalid_transitions_say_what_is_allowed() -> None:
    with pytest.raises(
        TransitionError,
        match=r"candidate and cannot become rolled_back.*"
        r"promoted \(by gate, manual\)",
    ):
        check_transition("ckpt-1", "candidate", "rolled_back", "rollback")
    with pytest.raises(TransitionError, match="--force"):
        check_transition("ckpt-1", "rejected", "promoted", "manual")


def test_promotion_supersedes_the_previous_one_with_who_and_why() -> None:
    led = Ledger("a", "b")
    (row,) = led.promote("a")
    assert row["status"] == "promoted" and row["previous_checkpoint_id"] is None
    assert row["actor"] == "test" and row["reason"] == "r" and row["path"] == "/ckpt/a"
    superseded, promoted = led.promote("b", eval_metrics={"win": 1})
    assert (superseded["checkpoint_id"], superseded["status"]) == ("a", "superseded")
    assert (promoted["checkpoint_id"], promoted["previous_checkpoint_id"]) == ("b", "a")
    assert promoted["eval_metrics"] == {"win": 1} and promoted["step"] == 2
    assert led.status() == {"a": "superseded", "b": "promoted"}
    assert led.book.promoted.checkpoint_id == "b"  # type: ignore[union-attr]
    assert superseded["ts"] < promoted["ts"]  # one change, ordered rows


def test_promoting_the_promoted_one_again_is_a_no_op() -> None:
    led = Ledger("a")
    led.promote("a")
    assert led.promote("a", action="manual") == []


def test_rejected_needs_an_override_and_unknown_ids_are_named() -> None:
    led = Ledger("a", "b")
    led.apply(plan_reject(led.book, "a", action="gate", actor="t", reason="worse", now=led.now))
    with pytest.raises(TransitionError, match="rejected"):
        led.promote("a", action="manual")
    led.promote("a", action="override")
    assert led.status()["a"] == "promoted"
    with pytest.raises(UnknownCheckpointError, match=r"no checkpoint 'zzz'.*latest known: a, b"):
        led.promote("zzz")
    with pytest.raises(TransitionError):  # promoted → rejected is not a thing
        plan_reject(led.book, "a", action="gate", actor="t", reason="x", now=led.now)


def test_rollback_walks_back_through_promotions_like_a_stack() -> None:
    led = Ledger("a", "b", "c")
    for cid in "abc":
        led.promote(cid)
    plan = led.rollback()
    assert (plan.rolled_back, plan.restored) == ("c", "b")
    assert led.status() == {"a": "superseded", "b": "promoted", "c": "rolled_back"}
    restored = plan.rows[-1]
    assert restored["actor"] == "ops" and "rollback of c" in restored["reason"]
    assert led.rollback().restored == "a"
    last = led.rollback()
    assert (last.rolled_back, last.restored) == ("a", None)  # the base model is served now
    assert led.book.promoted is None
    with pytest.raises(TransitionError, match="nothing is promoted"):
        led.rollback()


def test_a_rolled_back_checkpoint_is_not_restored_by_a_later_rollback() -> None:
    led = Ledger("a", "b", "c")
    led.promote("a")
    led.promote("b")
    led.rollback()  # b rolled back, a promoted
    led.promote("c")  # a superseded
    assert led.rollback().restored == "a"  # not b


def test_event_ids_are_stable_and_distinct_when_a_checkpoint_is_promoted_again() -> None:
    led = Ledger("a", "b")
    first = led.promote("a")
    replay = plan_promote(Book(led.rows[:2]), "a", action="gate", actor="test", reason="r", now=1)
    assert replay[0]["event_id"] == first[0]["event_id"]  # a retried write lands once
    led.promote("b")
    again = led.promote("a", action="manual")
    ids = [r["event_id"] for r in led.rows]
    assert len(ids) == len(set(ids)) and again[-1]["checkpoint_id"] == "a"


def test_a_torn_write_leaving_two_promoted_is_repaired_by_the_next_change() -> None:
    led = Ledger("a", "b", "c")
    led.promote("a")
    # a crash appended b's promoted row but not a's superseded row
    led.apply(
        [
            r
            for r in plan_promote(led.book, "b", action="gate", actor="t", reason="r", now=led.now)
            if r["status"] == "promoted"
        ]
    )
    assert sorted(k for k, v in led.status().items() if v == "promoted") == ["a", "b"]
    assert led.book.promoted.checkpoint_id == "b"  # type: ignore[union-attr]
    led.promote("c")
    assert led.status() == {"a": "superseded", "b": "superseded", "c": "promoted"}


def test_candidates_newest_first_and_training_metrics_are_read() -> None:
    led = Ledger("a", "b", "c")
    assert [c.checkpoint_id for c in led.book.candidates()] == ["c", "b", "a"]
    assert led.book.get("a").train_metrics == {"loss": 1.5, "kl": 0.001}
    nan = candidate("d", 4, 2_000) | {"reason": 'trained: {"loss": NaN}'}
    assert Book([nan]).get("d").train_metrics["loss"] != Book([nan]).get("d").train_metrics["loss"]
