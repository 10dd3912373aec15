"""Which requests generate in the next round: interactive first, background in what is left.

Pure logic (no torch, no threads), so the policy is tested directly; the engine applies the
`Plan` under its lock between decode steps. The engine batches rows into groups (one KV cache
each); a group holds rows of one priority class, so a background group can be paused as a whole:
it keeps its KV cache and sampled tokens, is skipped by the decode loop, and resumes exactly where
it stopped (its tokens do not change by being paused).

Rules, applied every round:
1. Waiting interactive requests are admitted up to `max_batch` minus the interactive rows already
   running; background rows never hold a slot an interactive request needs.
2. Background rows may use the rest of the batch, but while any interactive request runs or waits
   at most `background_cap` of them run (`policy.background_rows_while_interactive`). On a small
   CPU every running row lengthens each round, so a cap of 0 keeps a user's token rate at the
   idle server's; on a GPU, where a bigger batch costs little, the cap can be `max_batch`.
3. Over the limit, the most recently admitted background groups are paused first (older work is
   closer to done); under it, paused groups resume oldest first, and new background requests are
   admitted only once nothing paused is left (FIFO within the class, so nothing starves once
   interactive load stops).
4. A round prefills at most `background_prefill_tokens` of background prompt (at least one
   request). A prefill cannot be paused, and on a CPU it is most of a judge call's cost: eight
   ~300-token judge prompts prefilled together take seconds, and a user arriving meanwhile waits
   for all of them. Split over rounds, a user waits for at most one such slice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from metaclaw.serving.priority import Priority


class GroupView(Protocol):
    """What the planner needs of a running group."""

    @property
    def priority(self) -> Priority: ...

    @property
    def paused(self) -> bool: ...

    @property
    def size(self) -> int: ...  # rows still generating


G = TypeVar("G", bound=GroupView)


@dataclass
class Plan(Generic[G]):
    pause: list[G] = field(default_factory=list)
    resume: list[G] = field(default_factory=list)
    admit_interactive: int = 0
    admit_background: int = 0


def plan(
    groups: Sequence[G],
    *,
    waiting_interactive: int,
    waiting_background: int,
    max_batch: int,
    background_cap: int,
) -> Plan[G]:
    """The next round's changes; `groups` in admission order (oldest first)."""
    out: Plan[G] = Plan()
    running_interactive = sum(g.size for g in groups if g.priority is Priority.INTERACTIVE)
    out.admit_interactive = min(waiting_interactive, max(0, max_batch - running_interactive))
    limit = max_batch - running_interactive - out.admit_interactive
    if running_interactive + waiting_interactive > 0:
        limit = min(limit, background_cap)
    background = [g for g in groups if g.priority is not Priority.INTERACTIVE]
    running = [g for g in background if not g.paused]
    used = sum(g.size for g in running)
    for group in reversed(running):  # newest first
        if used <= limit:
            break
        out.pause.append(group)
        used -= group.size
    if out.pause:
        return out
    paused = [g for g in background if g.paused]
    for group in paused:  # oldest first
        if used + group.size > limit:
            break
        out.resume.append(group)
        used += group.size
    if len(out.resume) == len(paused):
        out.admit_background = min(waiting_background, max(0, limit - used))
    return out


def within_budget(prompt_lengths: Sequence[int], most: int, budget: int) -> int:
    """How many of the next waiting background requests (their prompt lengths, in queue order)
    to prefill this round: at most `most`, and no more prompt tokens than `budget` beyond the
    first (which is always taken, or a long prompt would never start). 0 = no budget."""
    taken = tokens = 0
    for n in prompt_lengths[:most]:
        if taken and budget and tokens + n > budget:
            break
        taken += 1
        tokens += n
    return taken
