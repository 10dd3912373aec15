"""The `metaclaw` command line (DESIGN.md, CLI contract).

Commands that orchestrate flows import the `flows` package lazily, so the library itself never
imports Prefect and `metaclaw sql` stays fast.
"""

from __future__ import annotations

import importlib
import json
import sys
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from metaclaw.config import Settings, config_file_path

app = typer.Typer(help="MetaClaw: agents that improve themselves from their own conversations.",
                  no_args_is_help=True, add_completion=False)
console = Console()
err_console = Console(stderr=True)

DEFAULT_PREFECT_PORT = 4200


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        err_console.print(f"[red]invalid configuration[/red] (file {config_file_path()}, "
                          "environment METACLAW_*):")
        for error in exc.errors():
            key = ".".join(str(p) for p in error["loc"])
            err_console.print(f"  {key}: {error['msg']}")
        raise typer.Exit(2) from None


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` pairs; a value is JSON when it parses as JSON, else a string."""
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--param")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


@app.command()
def proxy(
    host: Annotated[str | None, typer.Option(help="Bind address (default proxy.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default proxy.port).")] = None,
) -> None:
    """Run the capture proxy alone."""
    from metaclaw.proxy.server import serve

    settings = load_settings()
    bind = f"{host or settings.proxy.host}:{port or settings.proxy.port}"
    err_console.print(f"MetaClaw proxy on http://{bind}/v1 → "
                      f"{settings.upstream.base_url or '(no upstream configured)'}")
    serve(settings, host, port)


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="SQL over the ledger views (turns, rewards, …).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array of rows.")] = False,
) -> None:
    """Query the ledger through DuckDB."""
    import duckdb

    from metaclaw.ledger import query as run_query

    settings = load_settings()
    try:
        columns, rows = run_query(settings.paths, query)
    except duckdb.Error as exc:
        err_console.print(f"[red]query failed:[/red] {exc}")
        raise typer.Exit(1) from None
    if as_json:
        records = [{c: _jsonable(v) for c, v in zip(columns, row, strict=True)} for row in rows]
        sys.stdout.write(json.dumps(records, default=str) + "\n")
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def _prefect_url(explicit: str | None) -> str | None:
    """The API of a running `metaclaw up`, so hand-triggered runs show in its UI."""
    if explicit:
        return explicit
    url = f"http://127.0.0.1:{DEFAULT_PREFECT_PORT}/api"
    try:
        if httpx.get(f"{url}/health", timeout=1).status_code == 200:
            return url
    except httpx.HTTPError:
        pass
    return None


@app.command()
def run(
    flow: Annotated[str, typer.Argument(help="Flow to run now, e.g. ingest.")],
    param: Annotated[list[str] | None, typer.Option("--param", help="KEY=VALUE (repeat).")] = None,
    prefect_url: Annotated[str | None, typer.Option(help="Prefect API URL.")] = None,
) -> None:
    """Run one flow now (against a running Prefect server, else a temporary one)."""
    from metaclaw.supervisor import apply_env, prefect_env

    settings = load_settings()
    params = parse_params(param or [])
    apply_env(prefect_env(settings.paths.prefect, _prefect_url(prefect_url)))
    flows = importlib.import_module("flows.deployments").FLOWS
    if flow not in flows:
        err_console.print(f"[red]unknown flow {flow!r}[/red]; flows: {', '.join(sorted(flows))}")
        raise typer.Exit(2)
    result = flows[flow](**params)
    console.print_json(json.dumps(result, default=str))


@app.command()
def status() -> None:
    """Ledger counts and proxy health."""
    from metaclaw.ledger import TABLES
    from metaclaw.ledger import query as run_query

    settings = load_settings()
    table = Table("table", "rows", title=f"ledger at {settings.paths.home}")
    for name in TABLES:
        _, rows = run_query(settings.paths, f"SELECT count(*) FROM {name}")
        table.add_row(name, str(rows[0][0]))
    console.print(table)
    url = f"http://{settings.proxy.host}:{settings.proxy.port}/healthz"
    try:
        health = httpx.get(url, timeout=2).json()
        console.print(f"proxy {url}: [green]{health['status']}[/green] {health['ledger']}")
    except (httpx.HTTPError, ValueError):
        console.print(f"proxy {url}: [yellow]not running[/yellow]")


@app.command()
def up(
    proxy_port: Annotated[int | None, typer.Option(help="Proxy port (default proxy.port).")] = None,
    prefect_port: Annotated[
        int, typer.Option(help="Prefect server/UI port.")
    ] = DEFAULT_PREFECT_PORT,
) -> None:
    """The main job: Prefect server, proxy, and every deployment on its schedule. Ctrl-C stops."""
    from metaclaw.supervisor import apply_env, prefect_env, start_prefect_server, start_proxy

    settings = load_settings()
    paths = settings.paths
    port = proxy_port or settings.proxy.port
    api = f"http://127.0.0.1:{prefect_port}/api"
    apply_env(prefect_env(paths.prefect, api))
    children = []
    try:
        with console.status("starting the Prefect server (SQLite under "
                            f"{paths.prefect}) …"):
            children.append(start_prefect_server(paths, prefect_port))
        with console.status("starting the proxy …"):
            children.append(start_proxy(paths, port))
        upstream = settings.upstream.base_url or "(none: set METACLAW_UPSTREAM__BASE_URL)"
        proxy_url = f"http://{settings.proxy.host}:{port}/v1"
        console.print(f"[bold]proxy[/bold]      {proxy_url} → {upstream}")
        console.print(f"[bold]Prefect UI[/bold] http://127.0.0.1:{prefect_port}")
        console.print(f"[bold]data[/bold]       {paths.home.resolve()}  (logs in {paths.logs})")
        console.print("serving deployments; Ctrl-C stops everything")
        deployments = importlib.import_module("flows.deployments")
        prefect = importlib.import_module("prefect")
        prefect.serve(*deployments.build_deployments(settings), print_starting_message=False)
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        for child in reversed(children):
            child.stop()
        console.print("stopped")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
