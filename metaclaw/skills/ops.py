"""The library's operations that touch several stores at once: SKILL.md import/export, efficacy
refresh with auto-retirement, diagnosis and evolution steps. The flows (`flows/diagnose.py`,
`flows/evolve.py`) and the CLI call these; each is safe to re-run (stable ids, logged progress).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from metaclaw.ledger import append_rows, connect
from metaclaw.skills import diagnosis as dx
from metaclaw.skills import efficacy, evolution, safety, skillmd
from metaclaw.skills.critic import Critic, CriticBudgetExceeded, CriticError, CriticUnavailable
from metaclaw.skills.model import Skill, SkillValidationError, validate
from metaclaw.skills.store import Change, CommitResult, SkillStore

log = logging.getLogger(__name__)


def record_events(paths: Any, result: CommitResult) -> int:
    """Append the commit's `skill_events` to the ledger (stable ids: a retry adds nothing)."""
    rows = result.event_rows()
    if rows:
        append_rows(paths.wal, "skill_events", rows)
    return len(rows)


# -- SKILL.md ------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    set_version: int = 0


def import_dir(
    store: SkillStore,
    directory: Path,
    *,
    max_instruction_chars: int = 4000,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[ImportReport, CommitResult]:
    """Import `<dir>/<name>/SKILL.md` folders: new names are created, changed ones get a new
    version, identical ones are left alone (so importing twice writes nothing)."""
    files = skillmd.find_skill_files(directory)
    report = ImportReport()
    parsed: list[skillmd.ParsedSkill] = []
    for i, path in enumerate(files):
        try:
            item = skillmd.parse(
                skillmd.read_file(path), fallback_name=path.parent.name, source=str(path)
            )
            parsed.append(
                skillmd.ParsedSkill(
                    validate(item.skill, max_instruction_chars=max_instruction_chars),
                    item.declared_id,
                    item.composes_names,
                )
            )
        except SkillValidationError as exc:
            report.errors.append(str(exc))
        if progress:
            progress(i + 1, len(files))
    current = {s.skill_id: s for s in store.current()}
    by_name = {p.skill.name: p.skill.skill_id for p in parsed} | {
        s.name: s.skill_id for s in current.values()
    }
    changes: list[Change] = []
    author = f"import:{Path(directory).name}"
    for item in parsed:
        composes = tuple(by_name[n] for n in item.composes_names if n in by_name)
        draft = Skill(**{**_fields(item.skill), "composes": composes, "author": author})
        old = current.get(draft.skill_id)
        if old is None:
            changes.append(Change("created", draft, reason=f"imported from {directory}"))
            report.created.append(draft.name)
        elif old.content_hash == draft.content_hash:
            report.unchanged.append(draft.name)
        else:
            new = old.next_version(
                **{k: v for k, v in _fields(draft).items() if k != "name"},
                author=author,
                diagnosis_ids=(),
            )
            changes.append(Change("updated", new, reason=f"imported from {directory}"))
            report.updated.append(draft.name)
    result = store.commit(changes)
    report.set_version = result.set_version
    return report, result


def _fields(skill: Skill) -> dict[str, Any]:
    return {
        "name": skill.name,
        "description": skill.description,
        "instructions": skill.instructions,
        "when_to_use": skill.when_to_use,
        "category": skill.category,
        "composes": skill.composes,
    }


def export_dir(store: SkillStore, directory: Path, *, include_inactive: bool = False) -> int:
    """Write `<dir>/<name>/SKILL.md` for the current version of every (active) skill."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    skills = store.current(None if include_inactive else "active")
    names = {s.skill_id: s.name for s in store.current()}
    for skill in skills:
        composes = [names[c] for c in skill.composes if c in names]
        skillmd.write_file(directory / skill.name, skillmd.render(skill, composes))
    return len(skills)


# -- efficacy ------------------------------------------------------------------------------------


def refresh_efficacy(
    settings: Any, store: SkillStore, *, max_turns: int = 50_000
) -> tuple[efficacy.EfficacyReport, CommitResult]:
    """Recompute every live skill version's statistics, store them (the proxy reloads), retire
    the confidently harmful active ones, and decide the proposals that cleared (or failed) the
    efficacy bar (`skills.promotion`: auto promotes, manual leaves it to a person)."""
    cfg = settings.skills
    con = connect(settings.paths)
    try:
        rows = con.execute(
            efficacy.rewarded_turns_sql(cfg.efficacy_window_days, max_turns)
        ).fetchall()
    finally:
        con.close()
    turns = efficacy.to_rewarded(rows)
    skills = store.live()
    vectors = store.vectors([s.ref for s in skills])
    stats = efficacy.compute(
        skills, vectors, turns, store.embedder.embed, min_similarity=cfg.min_similarity
    )
    store.write_stats([e.row() for e in stats])
    retire = efficacy.retirements(skills, stats, min_uses=cfg.retire_min_uses, z=cfg.retire_z)
    verdicts = efficacy.verdicts(
        skills, stats, min_uses=cfg.promote_min_uses, z=cfg.promote_z, auto=cfg.promotion == "auto"
    )
    result = store.commit(
        [Change("retired", r.skill, reason=r.reason) for r in retire]
        + [Change(v.event, v.skill, reason=v.reason) for v in verdicts]
    )
    return efficacy.EfficacyReport(stats, retire, len(turns), verdicts), result


# -- diagnosis -----------------------------------------------------------------------------------


@dataclass
class DiagnoseReport:
    groups: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    calls: int = 0
    budget_exhausted: bool = False


def diagnose_groups(critic: Critic, groups: list[dx.FailureGroup]) -> DiagnoseReport:
    """Ask the critic about each failure group; invalid answers are rejected, not stored."""
    report = DiagnoseReport(groups=len(groups))
    for group in groups:
        try:
            answer = critic.ask(
                dx.SYSTEM_PROMPT, dx.user_prompt(group), dx.DiagnosisAnswer, group.turn_ids[0]
            )
        except CriticBudgetExceeded as exc:
            report.errors.append(str(exc))
            report.budget_exhausted = True
            break
        except CriticUnavailable as exc:  # the rest would fail the same way: retry next run
            report.errors.append(str(exc))
            break
        except CriticError as exc:
            report.errors.append(f"session {group.session_id}: {exc}")
            continue
        report.rows.append(dx.to_row(group, answer, critic.model))
    report.calls = critic.calls
    return report


# -- evolution -----------------------------------------------------------------------------------


def pending_clusters(
    settings: Any, store: SkillStore, critic_model: str
) -> list[list[evolution.PendingDiagnosis]]:
    con = connect(settings.paths)
    try:
        rows = con.execute(evolution.pending_sql()).fetchall()
    finally:
        con.close()
    done = store.considered(critic_model, evolution.PROMPT_VERSION)
    pending = evolution.to_pending(rows, done)
    return evolution.cluster(pending, store.embedder.embed)


def propose(
    store: SkillStore, critic: Critic, clusters: list[list[evolution.PendingDiagnosis]]
) -> list[evolution.Proposal]:
    """One critic call per cluster; stops when the call budget is spent."""
    active = store.current("active")
    vectors = store.vectors([s.ref for s in active])
    out = []
    for group in clusters:
        shown = evolution.nearest_skills(group, active, vectors, store.embedder.embed)
        proposal = evolution.Proposal(
            [d.diagnosis_id for d in group],
            [s.skill_id for s in shown],
            sessions=[d.session_id for d in group if d.session_id],
            agent_id=group[0].agent_id,
        )
        try:
            proposal.answer = critic.ask(
                evolution.SYSTEM_PROMPT,
                evolution.user_prompt(group, shown),
                evolution.EvolveAnswer,
                next((t for d in group for t in d.turn_ids), None),
            )
        except (CriticBudgetExceeded, CriticUnavailable):
            break  # the diagnoses not asked about stay pending for the next run
        except CriticError as exc:
            proposal.error = str(exc)
        out.append(proposal)
    return out


def apply_proposals(
    settings: Any,
    store: SkillStore,
    proposals: list[evolution.Proposal],
    critic_model: str,
    critic: Critic | None = None,
) -> tuple[evolution.Outcome, CommitResult]:
    """Check proposals against the library, have the critic scan each new text's intent,
    commit the accepted changes (all `proposed`) as one skill-set version, and log every
    considered diagnosis."""
    cfg = settings.skills
    latest = store.current()
    live = store.live()
    active = [s for s in live if s.status == "active"]
    live_ids = {s.skill_id for s in live}
    planner = evolution.Planner(
        active,
        store.vectors([s.ref for s in active]),
        store.embedder.embed,
        author=critic_model,
        dedup_similarity=cfg.dedup_similarity,
        max_instruction_chars=cfg.max_instruction_chars,
        max_new=cfg.max_new_skills_per_run,
        inactive=[s for s in latest if s.skill_id not in live_ids],
        latest=latest,
        rejected=store.all_versions("status = 'rejected'"),
    )
    for proposal in proposals:
        planner.add(proposal)
    outcome = planner.outcome
    outcome.changes = [
        ch for ch in (scan_change(critic, ch, outcome) for ch in outcome.changes) if ch is not None
    ]
    result = store.commit(outcome.changes)
    store.log_considered(outcome.considered, critic_model, evolution.PROMPT_VERSION)
    return outcome, result


def scan_change(critic: Critic | None, change: Change, outcome: evolution.Outcome) -> Change | None:
    """The change with its intent-scan verdict recorded, or None when the critic judged it
    unsafe (then it is rejected like a validation failure and never stored). An unreachable
    critic leaves the text unscanned: it stays proposed until a person approves it."""
    if critic is None or change.event not in ("created", "updated", "merged"):
        return change
    skill = change.skill
    fields = {
        "name": skill.name,
        "description": skill.description,
        "when_to_use": skill.when_to_use,
        "instructions": skill.instructions,
    }
    try:
        verdict = safety.scan(critic, fields)
    except CriticError as exc:  # includes budget and unreachable: unscanned, not accepted
        log.warning("intent scan of %s failed, it stays unscanned: %s", skill.name, exc)
        return change
    if not verdict.safe:
        why = f"skill {skill.name} rejected as unsafe by the intent scan ({verdict.category}): "
        outcome.rejected.append((list(skill.diagnosis_ids), why + verdict.reason))
        return None
    return replace(change, skill=replace(skill, scan=f"safe:{critic.model}"))
