"""`metaclaw agents add|list|show|rotate-key|remove`: the agents behind this MetaClaw.

A key is printed once, when it is made (`add`, `rotate-key`), and never stored: the registry
keeps its SHA-256 only, so a lost key is replaced, not recovered.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from metaclaw.agents.registry import AgentError, Registry, new_key
from metaclaw.agents.store import load, registry_path, update
from metaclaw.cli_support import console, err_console, load_settings

app = typer.Typer(
    help="Agents: one key, one set of turns and one skill library each (docs/agents.md).",
    add_completion=False,
    no_args_is_help=True,
)


def _path() -> Path:
    return registry_path(load_settings().paths.home)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _change(change: Callable[[Registry], Registry]) -> Registry:
    try:
        return update(_path(), change)
    except AgentError as exc:
        err_console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None


def _read() -> Registry:
    try:
        return load(_path())
    except AgentError as exc:
        err_console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None


def _print_key(name: str, key: str) -> None:
    # stdout carries the key alone, so `KEY=$(metaclaw agents add NAME)` works
    err_console.print(
        f"Key of agent [bold]{name}[/bold] (shown once; only its hash is stored):",
        highlight=False,
    )
    print(key)


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="Agent name: lower-case letters, digits, - or _.")],
    shares_skills_with: Annotated[
        list[str] | None,
        typer.Option(
            "--shares-skills-with",
            help="Also inject skills from this agent's library (repeat for several).",
        ),
    ] = None,
) -> None:
    """Create an agent and print its proxy key."""
    key = new_key()
    _change(lambda r: r.add(name, key, shares_skills_with or [], _now()))
    _print_key(name, key)


@app.command("list")
def list_agents() -> None:
    """The agents, whose skills each reads, and when its key was made."""
    registry = _read()
    if not registry:
        console.print("no agents: every request is the 'default' agent (`metaclaw agents add`)")
        return
    table = Table("agent", "reads skills of", "created", "key created")
    for agent in registry.agents.values():
        table.add_row(
            agent.name,
            ", ".join(registry.skill_libraries(agent.name)),
            agent.created_at,
            agent.key_created_at,
        )
    console.print(table)


@app.command()
def show(name: str) -> None:
    """One agent (never its key: only a hash is stored)."""
    registry = _read()
    try:
        agent = registry.get(name)
    except AgentError as exc:
        err_console.print(f"[red]{exc}[/red]", highlight=False)
        raise typer.Exit(1) from None
    console.print(f"agent           {agent.name}", highlight=False)
    console.print(f"reads skills of {', '.join(registry.skill_libraries(name))}", highlight=False)
    console.print(f"created         {agent.created_at}", highlight=False)
    console.print(f"key created     {agent.key_created_at}", highlight=False)
    console.print(f"key sha256      {agent.key_sha256[:12]}…", highlight=False)


@app.command("rotate-key")
def rotate_key(name: str) -> None:
    """Issue a new key; the old one is refused from the proxy's next request on."""
    key = new_key()
    _change(lambda r: r.rotate(name, key, _now()))
    _print_key(name, key)


@app.command()
def remove(name: str) -> None:
    """Remove an agent: its key is refused at once; its turns and skills stay in the ledger."""
    registry = _change(lambda r: r.remove(name))
    console.print(f"removed agent {name}", highlight=False)
    if not registry:
        err_console.print(
            "[yellow]no agents left: the proxy now takes requests without a key, as the "
            "'default' agent, unless proxy.api_keys is set[/yellow]"
        )
