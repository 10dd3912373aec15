"""`metaclaw config show|set`: the effective configuration and edits of `metaclaw.toml`.

`show` answers "what is this process going to use, and why" (default / file / env / arg per
key, secrets masked); `set` edits the file with the value validated first, so a typo is caught
at the prompt rather than at the next `metaclaw up`.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.table import Table

from metaclaw.cli_support import console, err_console, load_settings
from metaclaw.config import config_file_path
from metaclaw.config_tools import ConfigKeyError, describe, mask_url, set_in_file

app = typer.Typer(
    help="Show or edit the configuration (metaclaw.toml, METACLAW_* variables).",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def show(
    prefix: Annotated[str | None, typer.Argument(help="Only keys starting with this.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """The effective configuration: every key, its value (secrets masked) and its source."""
    rows = [r for r in describe(load_settings()) if not prefix or r.key.startswith(prefix)]
    if as_json:
        out = {r.key: {"value": r.value, "source": r.source} for r in rows}
        sys.stdout.write(json.dumps(out, default=str) + "\n")
        return
    table = Table("key", "value", "source", title=f"configuration (file: {config_file_path()})")
    for r in rows:
        style = "" if r.source == "default" else "bold"
        table.add_row(r.key, json.dumps(r.value, default=str), r.source, style=style)
    console.print(table)


@app.command("set")
def set_(
    key: Annotated[str, typer.Argument(help="Dotted key, e.g. training.lora_rank.")],
    value: Annotated[str, typer.Argument(help='A TOML literal (8, true, ["a"]) or text.')],
) -> None:
    """Set KEY to VALUE in the TOML file (validated first; comments are kept)."""
    path = config_file_path()
    try:
        canonical = set_in_file(path, key, value)
    except ConfigKeyError as exc:
        err_console.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    except ValueError as exc:
        err_console.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(2) from None
    shown = "**********" if any(w in canonical for w in ("key", "token")) else mask_url(value)
    console.print(f"set {canonical} = {shown} in {path}", highlight=False)
