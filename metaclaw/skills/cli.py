"""`metaclaw skills …`: list, show, search, import, export, retire, restore, approve, reject,
pin.

A typer sub-app so metaclaw/cli.py only needs `app.add_typer(skills_app, name="skills")`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import Progress
from rich.table import Table

app = typer.Typer(
    help="The skill library: list, show, search, import/export SKILL.md folders.",
    no_args_is_help=True,
)
console = Console()
err = Console(stderr=True)


def _settings() -> Any:
    from metaclaw.cli_support import load_settings

    return load_settings()


def _store(settings: Any) -> Any:
    from metaclaw.skills.embedding import EmbeddingError
    from metaclaw.skills.model import SkillValidationError
    from metaclaw.skills.store import SkillStore

    try:
        return SkillStore.open(settings)
    except (EmbeddingError, SkillValidationError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _stats(store: Any) -> dict[str, dict[str, Any]]:
    return {r["ref"]: r for r in store.stats_rows()}


def _skill_dict(skill: Any, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    out = {
        "skill_id": skill.skill_id,
        "ref": skill.ref,
        "name": skill.name,
        "agent_id": skill.agent_id,
        "version": skill.version,
        "status": skill.status,
        "category": skill.category,
        "description": skill.description,
        "when_to_use": skill.when_to_use,
        "composes": list(skill.composes),
        "pinned": skill.pinned,
        "author": skill.author,
        "diagnosis_ids": list(skill.diagnosis_ids),
        "parent_version": skill.parent_version,
        "merged_from": list(skill.merged_from),
        "set_version": skill.set_version,
        "created_at": skill.created_at.isoformat(),
        "updated_at": skill.updated_at.isoformat(),
    }
    if stats is not None:
        out["uses"] = stats.get("uses", 0)
        out["mean_reward_with"] = stats.get("mean_with")
        out["mean_reward_without"] = stats.get("mean_without")
        out["effect"] = stats.get("effect")
    return out


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str) + "\n")


@app.command("list")
def list_skills(
    status: Annotated[str, typer.Option(help="active, retired, superseded or all.")] = "active",
    agent: Annotated[
        str | None, typer.Option(help="Only this agent's library (docs/agents.md).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """The current version of each skill, with its agent and efficacy statistics."""
    store = _store(_settings())
    skills = [
        s
        for s in store.current(None if status == "all" else status)
        if agent is None or s.agent_id == agent
    ]
    stats = _stats(store)
    if as_json:
        _print_json([_skill_dict(s, stats.get(s.ref, {})) for s in skills])
        return
    table = Table(
        "name",
        "agent",
        "version",
        "status",
        "category",
        "uses",
        "effect",
        "description",
        title=f"skills (skill set v{store.skill_set_version})",
    )
    for s in skills:
        st = stats.get(s.ref, {})
        effect = st.get("effect")
        table.add_row(
            s.name,
            s.agent_id,
            str(s.version),
            s.status + (" (pinned)" if s.pinned else ""),
            s.category,
            str(st.get("uses", 0)),
            "" if effect is None else f"{effect:+.2f}",
            s.description[:80],
        )
    console.print(table)


@app.command()
def show(
    skill: Annotated[str, typer.Argument(help="Name, skill id, or skill_id@version.")],
    agent: Annotated[
        str | None, typer.Option(help="The agent whose skill of that name (docs/agents.md).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One skill: its agent, instructions, lineage and every version."""
    from metaclaw.skills.store import SkillNotFoundError

    store = _store(_settings())
    try:
        found = store.get(skill, agent_id=agent)
    except SkillNotFoundError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    history = store.history(found.skill_id)
    stats = _stats(store)
    if as_json:
        _print_json(
            {
                **_skill_dict(found, stats.get(found.ref, {})),
                "instructions": found.instructions,
                "versions": [_skill_dict(v, stats.get(v.ref, {})) for v in history],
            }
        )
        return
    console.print(
        f"[bold]{found.name}[/bold] v{found.version} ({found.status}) "
        f"`{found.ref}` · {found.category} · agent {found.agent_id}"
    )
    console.print(f"[italic]{found.description}[/italic]")
    if found.when_to_use:
        console.print(f"When to use: {found.when_to_use}")
    console.print(Markdown(found.instructions))
    table = Table(
        "version",
        "status",
        "author",
        "parent",
        "diagnoses",
        "merged from",
        "uses",
        "effect",
        title="versions",
    )
    for v in history:
        st = stats.get(v.ref, {})
        effect = st.get("effect")
        table.add_row(
            str(v.version),
            v.status,
            v.author,
            str(v.parent_version or ""),
            ", ".join(d[:8] for d in v.diagnosis_ids),
            ", ".join(v.merged_from),
            str(st.get("uses", 0)),
            "" if effect is None else f"{effect:+.2f}",
        )
    console.print(table)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="Text to match, e.g. a user request.")],
    limit: Annotated[int, typer.Option(help="Most results.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """Rank skills for a request exactly as the proxy would (similarity × success rate)."""
    from metaclaw.skills.library import SkillLibrary

    settings = _settings()
    library = SkillLibrary.open(settings)
    if library.health.last_error:
        err.print(f"[red]{library.health.last_error}[/red]")
        raise typer.Exit(1)
    ranked = library.explain([{"role": "user", "content": query}], limit=limit)
    chosen = library.select([{"role": "user", "content": query}])
    for row in ranked:
        row["injected"] = row["ref"] in chosen.skills
    if as_json:
        _print_json(ranked)
        return
    table = Table(
        "name",
        "ref",
        "similarity",
        "rate",
        "score",
        "injected",
        title=f"top {limit} for {query[:60]!r}",
    )
    for row in ranked:
        table.add_row(
            row["name"],
            row["ref"],
            f"{row['similarity']:.3f}",
            f"{row['rate']:.3f}",
            f"{row['score']:.3f}",
            "yes" if row["injected"] else "",
        )
    console.print(table)


@app.command("import")
def import_skills(
    directory: Annotated[Path, typer.Argument(help="A folder of <name>/SKILL.md folders.")],
) -> None:
    """Import SKILL.md skills (upstream MetaClaw / OpenClaw format); re-importing is a no-op."""
    from metaclaw.skills import ops

    settings = _settings()
    store = _store(settings)
    try:
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("reading SKILL.md files", total=None)
            report, result = ops.import_dir(
                store,
                directory,
                max_instruction_chars=settings.skills.max_instruction_chars,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except FileNotFoundError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    ops.record_events(settings.paths, result)
    store.optimize()
    for problem in report.errors:
        err.print(f"[yellow]skipped:[/yellow] {problem}")
    console.print(
        f"imported from {directory}: {len(report.created)} created, "
        f"{len(report.updated)} updated, {len(report.unchanged)} unchanged, "
        f"{len(report.errors)} rejected (skill set v{store.skill_set_version})"
    )
    if report.errors and not (report.created or report.updated or report.unchanged):
        raise typer.Exit(1)


@app.command("export")
def export_skills(
    directory: Annotated[Path, typer.Argument(help="Where to write <name>/SKILL.md folders.")],
    all_versions: Annotated[bool, typer.Option("--all", help="Retired skills too.")] = False,
) -> None:
    """Export the current skills as SKILL.md folders (upstream MetaClaw / OpenClaw format)."""
    from metaclaw.skills import ops
    from metaclaw.skills.model import SkillValidationError

    store = _store(_settings())
    try:
        n = ops.export_dir(store, directory, include_inactive=all_versions)
    except SkillValidationError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"exported {n} skills to {directory}")


def _lifecycle(skill: str, event: str, reason: str) -> None:
    from metaclaw.skills import ops
    from metaclaw.skills.store import Change, SkillNotFoundError

    settings = _settings()
    store = _store(settings)
    try:
        found = store.get(skill)
    except SkillNotFoundError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if event in ("promoted", "rejected"):
        proposals = [s for s in store.history(found.skill_id) if s.status == "proposed"]
        if "@" in skill:
            proposals = [s for s in proposals if s.ref == found.ref]
        if not proposals:
            err.print(
                f"[red]{found.name} has no proposed version to "
                f"{'approve' if event == 'promoted' else 'reject'} (see `metaclaw skills "
                "show`); use retire/restore for active skills[/red]"
            )
            raise typer.Exit(1)
        found = proposals[-1]
    else:
        wanted = "retired" if event == "retired" else "active"
        if found.status == wanted and (event == "retired" or found.pinned):
            console.print(
                f"{found.name} is already {wanted}" + (" and pinned" if found.pinned else "")
            )
            return
        if event == "restored" and found.status == "superseded":
            err.print(
                f"[red]{found.name} v{found.version} was merged into another skill; "
                "restore that one instead[/red]"
            )
            raise typer.Exit(1)
    result = store.commit([Change(event, found, reason=reason)])
    ops.record_events(settings.paths, result)
    console.print(f"{found.name} v{found.version}: {event} (skill set v{result.set_version})")


@app.command()
def retire(
    skill: Annotated[str, typer.Argument(help="Name or skill id.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the change log).")] = "by hand",
) -> None:
    """Stop injecting a skill (its versions stay; `restore` brings it back). Sticky: evolution
    never brings a retired skill back."""
    _lifecycle(skill, "retired", reason)


@app.command()
def restore(
    skill: Annotated[str, typer.Argument(help="Name or skill id.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the change log).")] = "by hand",
) -> None:
    """Bring a retired or rejected skill back; it is pinned, so auto-retirement leaves it alone."""
    _lifecycle(skill, "restored", reason)


@app.command()
def approve(
    skill: Annotated[str, typer.Argument(help="Name, skill id or id@version.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the change log).")] = "by hand",
) -> None:
    """Promote a proposed (quarantined) skill version: active for every session."""
    _lifecycle(skill, "promoted", reason)


@app.command()
def reject(
    skill: Annotated[str, typer.Argument(help="Name, skill id or id@version.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the change log).")] = "by hand",
) -> None:
    """Reject a proposed skill version. Sticky: evolution never proposes that skill again."""
    _lifecycle(skill, "rejected", reason)


@app.command()
def pin(
    skill: Annotated[str, typer.Argument(help="Name or skill id.")],
    reason: Annotated[str, typer.Option(help="Why (kept in the change log).")] = "pinned",
) -> None:
    """Make the current version active and pinned: neither auto-retirement nor evolution
    changes it."""
    _lifecycle(skill, "restored", reason)
