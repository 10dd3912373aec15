"""Where the learner resumes from: the checkpoint registry decides, not the newest candidate.

The deploy gate promotes or rejects candidates; the learner must follow, or its drift from the
served policy only grows (every later candidate fails the gate's KL guard, every served turn
fails the learner's KL guard, and the loop stalls). `resume_point` is the one pure function
that turns (registry state, training history) into a resume state and the rule that chose it:

| registry / history                                        | resume from     | rule             |
|-----------------------------------------------------------|-----------------|------------------|
| no ok step and nothing promoted                           | base model      | `fresh`          |
| promoted checkpoint has no training state of this learner | nothing         | `stalled`        |
| newest ok step not descended from the promoted checkpoint | promoted        | `follow_registry`|
| a checkpoint above the promoted one was rolled back       | promoted        | `reset_rollback` |
| newest candidate rejected with a guard tripped            | promoted        | `reset_guard`    |
| N (`max_unpromoted_steps`) candidates above the promoted  | promoted        | `reset_drift`    |
| otherwise (pending or plainly rejected, < N above it)     | newest ok step  | `continue`       |

then, on the chosen state: `stall_after_failures` consecutive failed steps from it under the
same config, or `stall_after_rejections` candidates rejected since the last promotion, make it
`stalled`: no step is taken (no turn is consumed) and the trainer records a stall event.

Why keep accumulating after a plain rejection: the gate judges the newest candidate against the
promoted policy, and a one-step update mostly ties; discarding it on every rejection would make
every candidate a one-step update the gate cannot resolve, so nothing would ever be promoted.
The bound N is the anchor: the learner is never more than N steps from the served policy, which
keeps its turns within the importance-sampling staleness limit K (`max_staleness` ≥ N).

Registry rows are read with this module's own SQL (metaclaw.deploy imports training; the reverse
import would be a cycle): append-only `checkpoints` rows, the latest per checkpoint is its state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

from metaclaw.training.history import StepRecord

PROMOTED, REJECTED, ROLLED_BACK = "promoted", "rejected", "rolled_back"
BASE = ""  # the state path of the base model (a fresh LoRA)

REGISTRY_SQL = """
SELECT checkpoint_id, status, eval_metrics, epoch_us(ts) AS ts
FROM checkpoints ORDER BY ts, event_id
"""


@dataclass(frozen=True)
class CheckpointState:
    """A checkpoint's latest registry row, plus when it was last promoted."""

    status: str
    ts: int
    guards_tripped: tuple[str, ...] = ()
    promoted_ts: int | None = None


@dataclass(frozen=True)
class Registry:
    states: dict[str, CheckpointState] = field(default_factory=dict)

    @property
    def promoted(self) -> str | None:
        ids = [cid for cid, s in self.states.items() if s.status == PROMOTED]
        return max(ids, key=lambda c: self.states[c].ts) if ids else None

    def status(self, checkpoint_id: str | None) -> str | None:
        state = self.states.get(checkpoint_id or "")
        return state.status if state else None


@dataclass(frozen=True)
class Resume:
    """Where the learner starts its next step, and why."""

    rule: str
    reason: str
    state_path: str | None  # None: stalled; BASE: the base model
    checkpoint_id: str | None = None  # the checkpoint of that state (None: base)
    lineage: tuple[str | None, ...] = ()  # checkpoint ids from the state back to base (None)
    promoted: str | None = None
    unpromoted: int = 0  # steps of the resume state above the promoted checkpoint

    @property
    def stalled(self) -> bool:
        return self.state_path is None

    def summary(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "reason": self.reason,
            "state_path": self.state_path,
            "checkpoint_id": self.checkpoint_id,
            "promoted": self.promoted,
            "unpromoted": self.unpromoted,
        }


def _guards(eval_metrics: Any) -> tuple[str, ...]:
    """Tripped guard names of a gate verdict, read from what the gate records
    (`Evaluation.metrics()`: `"guards": [{"name", "tripped", …}]`); tolerant: absent or
    unreadable → none."""
    if isinstance(eval_metrics, str):
        try:
            eval_metrics = json.loads(eval_metrics)
        except json.JSONDecodeError:
            return ()
    if not isinstance(eval_metrics, dict) or not isinstance(eval_metrics.get("guards"), list):
        return ()
    return tuple(
        str(g.get("name"))
        for g in eval_metrics["guards"]
        if isinstance(g, dict) and g.get("tripped") is True
    )


def registry_from_rows(rows: Sequence[tuple[str, str, Any, int]]) -> Registry:
    """Replay (checkpoint_id, status, eval_metrics, ts) rows, oldest first."""
    states: dict[str, CheckpointState] = {}
    for cid, status, metrics, ts in rows:
        before = states.get(cid)
        promoted_ts = ts if status == PROMOTED else (before.promoted_ts if before else None)
        states[cid] = CheckpointState(status, int(ts), _guards(metrics), promoted_ts)
    return Registry(states)


def read_registry(con: duckdb.DuckDBPyConnection) -> Registry:
    return registry_from_rows(con.execute(REGISTRY_SQL).fetchall())


def _parent(step: StepRecord) -> str:
    parent = str(step.metrics.get("parent_state_path") or "")
    return BASE if parent.startswith("base:") else parent


def _chain(by_state: dict[str, StepRecord], state: str) -> list[StepRecord]:
    """Ok steps from `state` back to the base model, newest first."""
    out: list[StepRecord] = []
    seen: set[str] = set()
    while state and state in by_state and state not in seen:
        seen.add(state)
        out.append(by_state[state])
        state = _parent(by_state[state])
    return out


def _resume_at(
    rule: str, reason: str, state: str, by_state: dict[str, StepRecord], promoted: str | None
) -> Resume:
    chain = _chain(by_state, state)
    ids = tuple(s.metrics.get("checkpoint_id") for s in chain)
    above = 0
    for cid in ids:
        if cid == promoted:
            break
        above += 1
    return Resume(
        rule,
        reason,
        state,
        ids[0] if ids else None,
        (*ids, None),
        promoted,
        above if promoted in (*ids, None) else len(ids),
    )


def resume_point(
    steps: Sequence[StepRecord],
    registry: Registry,
    *,
    max_unpromoted: int,
    stall_after_failures: int,
    stall_after_rejections: int,
    config_sha: str | None = None,
) -> Resume:
    """The state table of the module docstring (pure)."""
    ok = [s for s in steps if s.ok and s.metrics.get("state_path")]
    by_state = {str(s.metrics["state_path"]): s for s in ok}
    by_ckpt = {s.metrics.get("checkpoint_id"): s for s in ok}
    promoted = registry.promoted
    anchor = BASE
    if promoted is not None:
        if promoted not in by_ckpt:
            return Resume(
                "stalled",
                f"the promoted checkpoint {promoted} has no training state "
                "of this learner (train_steps.metrics.state_path): nothing to train "
                "from",
                None,
                promoted=promoted,
            )
        anchor = str(by_ckpt[promoted].metrics["state_path"])
    head = ok[-1] if ok else None
    if head is None:
        choice = _resume_at(
            "fresh", "no training step yet: the base model", BASE, by_state, promoted
        )
    else:
        choice = _decide(head, by_state, registry, anchor, promoted, max_unpromoted)
    return _stall_check(
        choice, steps, registry, stall_after_failures, stall_after_rejections, config_sha
    )


def _decide(
    head: StepRecord,
    by_state: dict[str, StepRecord],
    registry: Registry,
    anchor: str,
    promoted: str | None,
    max_unpromoted: int,
) -> Resume:
    head_state = str(head.metrics["state_path"])
    chain = _chain(by_state, head_state)
    states = [str(s.metrics["state_path"]) for s in chain]
    what = promoted or "the base model"
    if anchor and anchor not in states:
        return _resume_at(
            "follow_registry",
            f"the newest step is not descended from the promoted checkpoint {what}: resume from it",
            anchor,
            by_state,
            promoted,
        )
    above = chain[: states.index(anchor)] if anchor else chain
    rolled = [
        s.metrics.get("checkpoint_id")
        for s in above
        if registry.status(s.metrics.get("checkpoint_id")) == ROLLED_BACK
    ]
    if rolled:
        return _resume_at(
            "reset_rollback",
            f"{rolled[0]} was rolled back: reset to {what}",
            anchor,
            by_state,
            promoted,
        )
    head_ckpt = head.metrics.get("checkpoint_id")
    head_reg = registry.states.get(head_ckpt or "")
    if head_reg is not None and head_reg.status == REJECTED and head_reg.guards_tripped:
        return _resume_at(
            "reset_guard",
            f"{head_ckpt} was rejected by guard(s) "
            f"{', '.join(head_reg.guards_tripped)}: reset to {what}",
            anchor,
            by_state,
            promoted,
        )
    if len(above) >= max_unpromoted:
        return _resume_at(
            "reset_drift",
            f"{len(above)} unpromoted steps above {what} "
            f"(training.max_unpromoted_steps {max_unpromoted}): reset to it",
            anchor,
            by_state,
            promoted,
        )
    return _resume_at(
        "continue", f"{len(above)} unpromoted step(s) above {what}", head_state, by_state, promoted
    )


def _stall_check(
    choice: Resume,
    steps: Sequence[StepRecord],
    registry: Registry,
    after_failures: int,
    after_rejections: int,
    config_sha: str | None,
) -> Resume:
    if choice.stalled:
        return choice
    failures = 0
    for s in reversed(steps):
        status = s.metrics.get("status")
        if status == "stalled":
            continue
        if (
            status != "failed"
            or _parent(s) != choice.state_path
            or (s.metrics.get("metaclaw_config") or {}).get("sha256") != config_sha
        ):
            break
        failures += 1
    if failures >= after_failures:
        return Resume(
            "stalled",
            f"{failures} consecutive steps from this state failed under this "
            "config (training.stall_after_failures): fix the cause (see their reasons) "
            "or change the config",
            None,
            promoted=choice.promoted,
        )
    since = registry.states[choice.promoted].promoted_ts if choice.promoted else None
    rejected = sum(
        1
        for s in registry.states.values()
        if s.status == REJECTED and (since is None or s.ts > since)
    )
    if rejected >= after_rejections:
        what = choice.promoted or "the base model"
        return Resume(
            "stalled",
            f"{rejected} candidates rejected since {what} was promoted "
            "(training.stall_after_rejections): the gate accepts nothing this learner "
            "makes; review the gate's reports",
            None,
            promoted=choice.promoted,
        )
    return choice
