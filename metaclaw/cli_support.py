"""What every `metaclaw` sub-command shares: consoles, and loading the configuration with an
error that names the bad key instead of a traceback."""

from __future__ import annotations

import typer
from pydantic import ValidationError
from rich.console import Console

from metaclaw.config import Settings, config_file_path

console = Console()
err_console = Console(stderr=True)


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err_console.print(
            f"[red]invalid configuration[/red] (file {config_file_path()}, environment METACLAW_*):"
        )
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"])
            err_console.print(f"  {key}: {error['msg']}", markup=False, highlight=False)
        raise typer.Exit(2) from None
