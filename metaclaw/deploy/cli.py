"""`metaclaw checkpoints list|show|promote|rollback|evaluate` (docs/deploy.md, CLI).

`promote ID` is the operator's decision: it skips the evaluation but never the safety checks
(a durable path, finite weights); `--force` is needed to promote a checkpoint the gate rejected
or that was rolled back. `rollback` restores the previous promoted checkpoint (or the base
model) and the running policy server swaps at once. `evaluate` runs the gate now, with a
progress bar.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from metaclaw.config import Settings

app = typer.Typer(
    help="Checkpoints: list, promote, roll back, evaluate.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    from metaclaw.cli_support import load_settings

    return load_settings()


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1_000_000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _win(metrics: Any) -> str:
    win = (metrics or {}).get("win") if isinstance(metrics, dict) else None
    if not win or win.get("win_rate") is None:
        return ""
    return f"{win['win_rate']:.2f} [{win['low']:.2f}, {win['high']:.2f}] n={win['n']}"


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[red]{message}[/red]", highlight=False)
    return typer.Exit(code)


def _notice(change: Any) -> None:
    notice = change.notice
    if notice is None:
        return
    color = {"swapped": "green", "skipped": "cyan", "unreachable": "yellow"}.get(
        notice.status, "red"
    )
    console.print(
        f"policy server: [{color}]{notice.status}[/{color}] — {notice.detail}", highlight=False
    )


def _errors() -> tuple[type[Exception], ...]:
    from metaclaw.deploy.durable import NotServableError
    from metaclaw.deploy.registry import TransitionError, UnknownCheckpointError

    return (TransitionError, UnknownCheckpointError, NotServableError)


@app.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    limit: Annotated[int, typer.Option(help="Most recent checkpoints shown.")] = 30,
) -> None:
    """Checkpoints, newest first, with their state, verdict and who changed them last."""
    from metaclaw.deploy.store import read_book

    book = read_book(_settings().paths)
    ckpts = sorted(
        book.checkpoints.values(), key=lambda c: (c.step or 0, c.created.ts), reverse=True
    )[:limit]
    records: list[dict[str, Any]] = [
        {
            "checkpoint_id": c.checkpoint_id,
            "step": c.step,
            "backend": c.backend,
            "status": c.status,
            "path": c.path,
            "win": _win(c.evaluation),
            "reason": c.latest.reason,
            "actor": c.latest.actor,
            "updated": _when(c.latest.ts),
        }
        for c in ckpts
    ]
    if as_json:
        sys.stdout.write(json.dumps(records) + "\n")
        return
    if not records:
        console.print("no checkpoints yet (the train flow writes candidates)")
        return
    table = Table(
        "checkpoint",
        "step",
        "status",
        "win rate [CI]",
        "by",
        "updated",
        "reason",
        title=f"checkpoints ({len(book.checkpoints)})",
    )
    styles = {
        "promoted": "bold green",
        "rejected": "red",
        "rolled_back": "yellow",
        "candidate": "cyan",
    }
    for r in records:
        table.add_row(
            r["checkpoint_id"],
            str(r["step"] or ""),
            f"[{styles.get(r['status'], '')}]{r['status']}[/]",
            r["win"],
            r["actor"] or "",
            r["updated"],
            (r["reason"] or "")[:60],
        )
    console.print(table)
    promoted = book.promoted
    console.print(
        f"serving: [bold]{promoted.checkpoint_id if promoted else 'the base model'}[/bold]"
    )


@app.command()
def show(
    checkpoint_id: Annotated[str, typer.Argument(help="Checkpoint id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One checkpoint's history and its last evaluation."""
    from metaclaw.deploy.store import read_book

    try:
        ckpt = read_book(_settings().paths).get(checkpoint_id)
    except _errors() as exc:
        raise _fail(str(exc)) from None
    history = [
        {
            "status": e.status,
            "when": _when(e.ts),
            "actor": e.actor,
            "reason": e.reason,
            "previous": e.previous_checkpoint_id,
        }
        for e in ckpt.events
    ]
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "checkpoint_id": ckpt.checkpoint_id,
                    "path": ckpt.path,
                    "history": history,
                    "evaluation": ckpt.evaluation,
                }
            )
            + "\n"
        )
        return
    console.print(
        f"[bold]{ckpt.checkpoint_id}[/bold] step {ckpt.step} ({ckpt.backend}) {ckpt.path}",
        highlight=False,
    )
    table = Table("when", "status", "by", "reason")
    for h in history:
        table.add_row(h["when"], h["status"], h["actor"] or "", h["reason"] or "")
    console.print(table)
    evaluation = ckpt.evaluation
    if isinstance(evaluation, dict) and evaluation.get("win"):
        console.print(
            f"last evaluation vs {evaluation.get('baseline')}: "
            f"{_win(evaluation)} → {evaluation.get('decision')}"
        )
        test = evaluation.get("test")
        if isinstance(test, dict):
            console.print(
                f"  sign test: {test['wins']} prompts won, {test['losses']} lost, "
                f"{test['ties']} tied; p={test['p_value']:.3g} vs "
                f"α_{test['k']}={test['alpha_k']:.3g}",
                highlight=False,
            )
        for g in evaluation.get("guards") or []:
            mark = "[red]tripped[/red]" if g.get("tripped") else "ok"
            console.print(f"  guard {g['name']}: {mark} — {g.get('detail')}", highlight=False)


@app.command()
def promote(
    checkpoint_id: Annotated[str, typer.Argument(help="Checkpoint id to serve.")],
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).")] = "manual",
    force: Annotated[bool, typer.Option(help="Promote even if rejected or rolled back.")] = False,
) -> None:
    """Promote a checkpoint now (no evaluation); the policy server swaps to it at once."""
    from metaclaw.deploy.deployer import cli_actor
    from metaclaw.deploy.deployer import promote as do_promote

    settings = _settings()
    try:
        change = do_promote(settings, checkpoint_id, actor=cli_actor(), reason=reason, force=force)
    except _errors() as exc:
        raise _fail(str(exc)) from None
    console.print(change.message, highlight=False)
    _notice(change)


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in the ledger).")] = "rollback",
) -> None:
    """Roll back the promoted checkpoint: the previous one (or the base model) is served."""
    from metaclaw.deploy.deployer import cli_actor
    from metaclaw.deploy.deployer import rollback as do_rollback

    try:
        change = do_rollback(_settings(), actor=cli_actor(), reason=reason)
    except _errors() as exc:
        raise _fail(str(exc)) from None
    console.print(change.message, highlight=False)
    _notice(change)


@app.command()
def evaluate(
    checkpoint_id: Annotated[
        str | None, typer.Argument(help="Candidate (default: newest).")
    ] = None,
) -> None:
    """Run the gate now: evaluate a candidate and promote or reject it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from metaclaw.deploy.deployer import cli_actor, run_gate

    settings = _settings()
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=err
    )
    tasks: dict[str, Any] = {}

    def advance(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total)
        progress.update(tasks[phase], completed=done, total=total)

    try:
        with progress:
            outcome = run_gate(settings, checkpoint_id, actor=cli_actor(), progress=advance)
    except _errors() as exc:
        raise _fail(str(exc)) from None
    color = {"promoted": "green", "rejected": "red"}.get(outcome.status, "yellow")
    console.print(
        f"[{color}]{outcome.status}[/{color}] {outcome.checkpoint_id or ''}: {outcome.reason}",
        highlight=False,
    )
    if outcome.superseded:
        console.print(f"older candidates rejected unevaluated: {', '.join(outcome.superseded)}")
    if outcome.change is not None:
        _notice(outcome.change)
