"""The checkpoint registry: states, the transition table, and the rows each change appends.

The `checkpoints` table is append-only, one row per state change; a checkpoint's latest row is
its state. This module replays those rows into states (`Book`) and plans changes as new rows,
checking every change against `TRANSITIONS` — the one place that says what may happen:

    candidate  ──gate/manual──►  promoted  ──supersede──►  superseded ──restore/manual──► promoted
        │                           │
        └──gate/manual──► rejected  └──rollback──► rolled_back
    rejected / rolled_back ──override (manual --force)──► promoted

Exactly one checkpoint is promoted at a time: promoting X supersedes the promoted one in the same
append (the new row names it in `previous_checkpoint_id`). Rollback marks the promoted one
`rolled_back` and restores the most recently superseded checkpoint (a stack: rolling back twice
walks two promotions back); with none left the base model is served. Every row says who
(`actor`) and why (`reason`).

Row ids are a hash of (checkpoint_id, status, how many rows the checkpoint had): stable, so a
retried write of the same change lands once, and distinct when a checkpoint is promoted again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CANDIDATE, PROMOTED, SUPERSEDED, REJECTED, ROLLED_BACK = (
    "candidate",
    "promoted",
    "superseded",
    "rejected",
    "rolled_back",
)
STATUSES = (CANDIDATE, PROMOTED, SUPERSEDED, REJECTED, ROLLED_BACK)

# (from, to) → the actions that may make that change. Anything else is refused.
TRANSITIONS: dict[tuple[str, str], frozenset[str]] = {
    (CANDIDATE, PROMOTED): frozenset({"gate", "manual"}),
    (CANDIDATE, REJECTED): frozenset({"gate", "manual"}),
    (PROMOTED, SUPERSEDED): frozenset({"supersede"}),
    (PROMOTED, ROLLED_BACK): frozenset({"rollback"}),
    (SUPERSEDED, PROMOTED): frozenset({"restore", "manual"}),
    (REJECTED, PROMOTED): frozenset({"override"}),
    (ROLLED_BACK, PROMOTED): frozenset({"override"}),
}


class TransitionError(ValueError):
    """A state change the registry refuses; the message says what is allowed instead."""


class UnknownCheckpointError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown checkpoint"


def check_transition(checkpoint_id: str, current: str, target: str, action: str) -> None:
    """Raise `TransitionError` unless `action` may move a checkpoint from `current` to `target`."""
    allowed = TRANSITIONS.get((current, target))
    if allowed is not None and action in allowed:
        return
    if allowed is not None:
        hint = (
            " (re-run with --force to override the gate's verdict)" if "override" in allowed else ""
        )
        raise TransitionError(
            f"checkpoint {checkpoint_id} is {current}: {action!r} cannot make "
            f"it {target}; only {sorted(allowed)} can{hint}"
        )
    options = sorted(
        f"{to} (by {', '.join(sorted(a))})" for (fr, to), a in TRANSITIONS.items() if fr == current
    )
    raise TransitionError(
        f"checkpoint {checkpoint_id} is {current} and cannot become {target}; "
        f"from {current} it can become: {', '.join(options) or 'nothing'}"
    )


def event_id(checkpoint_id: str, status: str, seq: int) -> str:
    raw = json.dumps(["checkpoint", checkpoint_id, status, seq])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _micros(value: Any) -> int:
    if value is None:
        return 0
    if hasattr(value, "timestamp"):
        return round(value.timestamp() * 1_000_000)
    return int(value)


@dataclass(frozen=True)
class Event:
    """One `checkpoints` row."""

    event_id: str
    checkpoint_id: str
    status: str
    ts: int  # epoch µs
    step: int | None = None
    backend: str | None = None
    path: str | None = None
    eval_metrics: Any = None
    reason: str | None = None
    actor: str | None = None
    previous_checkpoint_id: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Event:
        return cls(
            event_id=str(row["event_id"]),
            checkpoint_id=str(row["checkpoint_id"]),
            status=str(row["status"]),
            ts=_micros(row.get("ts")),
            step=row.get("step"),
            backend=row.get("backend"),
            path=row.get("path"),
            eval_metrics=_json(row.get("eval_metrics")),
            reason=row.get("reason"),
            actor=row.get("actor"),
            previous_checkpoint_id=row.get("previous_checkpoint_id"),
        )

    def row(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "checkpoint_id": self.checkpoint_id,
            "step": self.step,
            "backend": self.backend,
            "path": self.path,
            "status": self.status,
            "eval_metrics": self.eval_metrics,
            "reason": self.reason,
            "ts": self.ts,
            "actor": self.actor,
            "previous_checkpoint_id": self.previous_checkpoint_id,
        }


@dataclass
class Checkpoint:
    """A checkpoint's history; its state is the latest event."""

    checkpoint_id: str
    events: list[Event] = field(default_factory=list)

    @property
    def latest(self) -> Event:
        return self.events[-1]

    @property
    def status(self) -> str:
        return self.latest.status

    @property
    def created(self) -> Event:
        return self.events[0]

    @property
    def step(self) -> int | None:
        return next((e.step for e in reversed(self.events) if e.step is not None), None)

    @property
    def backend(self) -> str | None:
        return next((e.backend for e in reversed(self.events) if e.backend), None)

    @property
    def path(self) -> str | None:
        return next((e.path for e in reversed(self.events) if e.path), None)

    @property
    def train_metrics(self) -> dict[str, Any]:
        """The training summary the trainer put in the candidate row's reason (`trained: {…}`)."""
        for e in self.events:
            if e.status == CANDIDATE and e.reason and e.reason.startswith("trained: "):
                try:  # json.loads reads NaN/Infinity, which a diverged step may have written
                    value = json.loads(e.reason[len("trained: ") :])
                except json.JSONDecodeError:
                    return {}
                return value if isinstance(value, dict) else {}
        return {}

    @property
    def evaluation(self) -> Any:
        return next((e.eval_metrics for e in reversed(self.events) if e.eval_metrics), None)


def _order(e: Event) -> tuple[int, str]:
    return (e.ts, e.event_id)


class Book:
    """Every checkpoint's state, replayed from `checkpoints` rows (pure; no I/O)."""

    def __init__(self, rows: Iterable[Mapping[str, Any] | Event]) -> None:
        events = sorted(
            (r if isinstance(r, Event) else Event.from_row(r) for r in rows), key=_order
        )
        seen: set[str] = set()
        self.checkpoints: dict[str, Checkpoint] = {}
        for e in events:
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
            ckpt = self.checkpoints.setdefault(e.checkpoint_id, Checkpoint(e.checkpoint_id))
            ckpt.events.append(e)
        self.last_ts = max((e.ts for e in events), default=0)

    def get(self, checkpoint_id: str) -> Checkpoint:
        try:
            return self.checkpoints[checkpoint_id]
        except KeyError:
            known = ", ".join(sorted(self.checkpoints)[-5:]) or "none yet"
            raise UnknownCheckpointError(
                f"no checkpoint {checkpoint_id!r} in the ledger "
                f"(latest known: {known}; see `metaclaw checkpoints "
                "list`)"
            ) from None

    def with_status(self, status: str) -> list[Checkpoint]:
        """Checkpoints in a state, most recent change first."""
        found = [c for c in self.checkpoints.values() if c.status == status]
        return sorted(found, key=lambda c: _order(c.latest), reverse=True)

    @property
    def promoted(self) -> Checkpoint | None:
        """The promoted checkpoint (after a torn write leaving two, the most recent one)."""
        found = self.with_status(PROMOTED)
        return found[0] if found else None

    @property
    def previous(self) -> Checkpoint | None:
        """What a rollback restores: the most recently superseded checkpoint."""
        found = self.with_status(SUPERSEDED)
        return found[0] if found else None

    def decisions_against(self) -> dict[str, int]:
        """How many gate decisions (a recorded comparison, promote or reject) were made against
        each current policy, by label ("base" or a checkpoint id). Every one counts, before or
        after a rollback restored that policy: the gate's α is spent per current policy."""
        counts: dict[str, int] = {}
        for ckpt in self.checkpoints.values():
            for e in ckpt.events:
                m = e.eval_metrics
                if (
                    e.status in (PROMOTED, REJECTED)
                    and isinstance(m, dict)
                    and isinstance(m.get("baseline"), str)
                    and m.get("pairs") is not None
                ):
                    counts[m["baseline"]] = counts.get(m["baseline"], 0) + 1
        return counts

    def candidates(self) -> list[Checkpoint]:
        """Candidates awaiting a verdict, newest (highest step, then latest) first."""
        found = self.with_status(CANDIDATE)
        return sorted(found, key=lambda c: (c.step or 0, _order(c.created)), reverse=True)


@dataclass
class Planner:
    """Builds the rows of one change against a `Book`; `rows` is what to append (in order)."""

    book: Book
    actor: str
    now: int  # epoch µs
    rows: list[dict[str, Any]] = field(default_factory=list)
    _pending: dict[str, int] = field(default_factory=dict)  # checkpoint → extra rows planned
    _status: dict[str, str] = field(default_factory=dict)

    def _ts(self) -> int:
        last = max([self.book.last_ts, *(r["ts"] for r in self.rows)])
        return max(self.now, last + 1)  # strictly increasing: order by ts is the history

    def status(self, checkpoint_id: str) -> str:
        return self._status.get(checkpoint_id) or self.book.get(checkpoint_id).status

    def move(
        self,
        checkpoint_id: str,
        target: str,
        action: str,
        reason: str,
        *,
        eval_metrics: Any = None,
        previous: str | None = None,
    ) -> None:
        ckpt = self.book.get(checkpoint_id)
        check_transition(checkpoint_id, self.status(checkpoint_id), target, action)
        seq = len(ckpt.events) + self._pending.get(checkpoint_id, 0)
        self.rows.append(
            Event(
                event_id=event_id(checkpoint_id, target, seq),
                checkpoint_id=checkpoint_id,
                status=target,
                ts=self._ts(),
                step=ckpt.step,
                backend=ckpt.backend,
                path=ckpt.path,
                eval_metrics=eval_metrics,
                reason=reason,
                actor=self.actor,
                previous_checkpoint_id=previous,
            ).row()
        )
        self._pending[checkpoint_id] = self._pending.get(checkpoint_id, 0) + 1
        self._status[checkpoint_id] = target

    def promoted_now(self) -> list[str]:
        """Checkpoints promoted after the rows planned so far."""
        ids = {c.checkpoint_id for c in self.book.with_status(PROMOTED)}
        ids |= {k for k, v in self._status.items() if v == PROMOTED}
        return sorted(k for k in ids if self.status(k) == PROMOTED)


def plan_promote(
    book: Book,
    checkpoint_id: str,
    *,
    action: str,
    actor: str,
    reason: str,
    now: int,
    eval_metrics: Any = None,
) -> list[dict[str, Any]]:
    """Rows promoting `checkpoint_id` and superseding whatever is promoted; [] if it already is."""
    planner = Planner(book, actor, now)
    if planner.status(checkpoint_id) == PROMOTED:
        return []
    check_transition(checkpoint_id, planner.status(checkpoint_id), PROMOTED, action)
    current = book.promoted
    for other in planner.promoted_now():  # normally one; more only after a torn write
        planner.move(other, SUPERSEDED, "supersede", f"superseded by {checkpoint_id}")
    planner.move(
        checkpoint_id,
        PROMOTED,
        action,
        reason,
        eval_metrics=eval_metrics,
        previous=current.checkpoint_id if current else None,
    )
    return planner.rows


def plan_reject(
    book: Book,
    checkpoint_id: str,
    *,
    action: str,
    actor: str,
    reason: str,
    now: int,
    eval_metrics: Any = None,
) -> list[dict[str, Any]]:
    planner = Planner(book, actor, now)
    planner.move(checkpoint_id, REJECTED, action, reason, eval_metrics=eval_metrics)
    return planner.rows


@dataclass(frozen=True)
class RollbackPlan:
    rows: list[dict[str, Any]]
    rolled_back: str
    restored: str | None  # None: nothing earlier was promoted, the base model is served


def plan_rollback(book: Book, *, actor: str, reason: str, now: int) -> RollbackPlan:
    """Roll the promoted checkpoint back and restore the previous promoted one."""
    current = book.promoted
    if current is None:
        raise TransitionError(
            "nothing is promoted, so there is nothing to roll back "
            "(`metaclaw checkpoints list` shows the history)"
        )
    planner = Planner(book, actor, now)
    for other in planner.promoted_now():
        planner.move(other, ROLLED_BACK, "rollback", reason)
    previous = book.previous
    if previous is not None:
        planner.move(
            previous.checkpoint_id,
            PROMOTED,
            "restore",
            f"restored by the rollback of {current.checkpoint_id}",
            previous=current.checkpoint_id,
        )
    return RollbackPlan(
        planner.rows, current.checkpoint_id, previous.checkpoint_id if previous else None
    )
