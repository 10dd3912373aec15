"""`metaclaw connect` (base URL + key for any OpenAI/Anthropic client) and
`metaclaw connect openclaw [--dry-run] [--undo]` (writes OpenClaw's config)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console

from metaclaw.config import Settings
from metaclaw.connect.openclaw import (
    OpenClawConfigError,
    connect_openclaw,
    openclaw_config_path,
    undo_openclaw,
)
from metaclaw.connect.targets import proxy_target

MASK = "**********"

app = typer.Typer(
    help="Point an agent at the MetaClaw proxy.", add_completion=False, invoke_without_command=True
)
console = Console()
err_console = Console(stderr=True)


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err_console.print("[red]invalid configuration[/red]; see `metaclaw config show`:")
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"])
            err_console.print(f"  {key}: {error['msg']}", markup=False, highlight=False)
        raise typer.Exit(2) from None


@app.callback()
def generic(
    ctx: typer.Context,
    show_key: Annotated[bool, typer.Option("--show-key", help="Print the proxy key itself.")] = (
        False
    ),
) -> None:
    """Print the base URL and key an OpenAI or Anthropic client should use."""
    if ctx.invoked_subcommand is not None:
        return
    target = proxy_target(_settings())
    if not target.auth:
        key, note = target.api_key, "  # any value: the proxy has no keys (proxy.api_keys)"
    else:
        key = target.api_key if show_key else MASK
        note = "" if show_key else "  # the first of proxy.api_keys; --show-key prints it"
    console.print("[bold]OpenAI-compatible clients[/bold] (openai SDK, OpenClaw, …)")
    console.print(f"  export OPENAI_BASE_URL={target.base_url}", highlight=False)
    console.print(f"  export OPENAI_API_KEY={key}{note}", highlight=False, markup=False)
    console.print("[bold]Anthropic clients[/bold] (anthropic SDK, Claude Code, …)")
    console.print(f"  export ANTHROPIC_BASE_URL={target.anthropic_base_url}", highlight=False)
    console.print(f"  export ANTHROPIC_API_KEY={key}", highlight=False, markup=False)
    if target.model:
        console.print(
            f"model: any name works; the proxy sends upstream.model={target.model!r}",
            highlight=False,
        )
    console.print("OpenClaw: `metaclaw connect openclaw` writes its config for you.")


@app.command()
def openclaw(
    config: Annotated[
        Path | None,
        typer.Option(
            help="OpenClaw config file (default: $OPENCLAW_CONFIG_PATH, "
            "$OPENCLAW_STATE_DIR/openclaw.json, ~/.openclaw/openclaw.json)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="Model id OpenClaw sends (default: upstream.model, else "
            "the agent's current model)."
        ),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the change only.")] = False,
    undo: Annotated[bool, typer.Option("--undo", help="Restore the original file.")] = False,
) -> None:
    """Make OpenClaw's default model provider the MetaClaw proxy (backup kept; --undo)."""
    path = config or openclaw_config_path()
    try:
        if undo:
            console.print(undo_openclaw(path), highlight=False)
            return
        settings = _settings()
        target = proxy_target(settings)
        result = connect_openclaw(
            path,
            base_url=target.base_url,
            api_key=target.api_key,
            upstream_model=target.model,
            model=model,
            dry_run=dry_run,
        )
    except OpenClawConfigError as exc:
        err_console.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if not result.changed:
        console.print(
            f"{path} already points at the proxy ({target.base_url}); nothing to do",
            highlight=False,
        )
        return
    console.print(result.diff, markup=False, highlight=False, end="")
    if dry_run:
        console.print("dry run: nothing written", highlight=False)
        return
    console.print(
        f"OpenClaw now uses metaclaw/{result.model} via {target.base_url} "
        f"(original kept as {result.backup}; undo: metaclaw connect openclaw --undo)",
        highlight=False,
    )
