"""The `metaclaw` command line (the commands table in README.md).

Commands that orchestrate flows import the `flows` package lazily, so the library itself never
imports Prefect and `metaclaw sql` stays fast.
"""

from __future__ import annotations

import importlib
import json
import sys
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from metaclaw.cli_support import console, err_console, load_settings

app = typer.Typer(
    help="MetaClaw: agents that improve themselves from their own conversations.",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_PREFECT_PORT = 4200


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
    from metaclaw.proxy.guard import OpenBindError
    from metaclaw.proxy.server import build_server

    settings = load_settings()
    try:
        server = build_server(settings, host, port)
    except OpenBindError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    bind = f"{host or settings.proxy.host}:{port or settings.proxy.port}"
    err_console.print(
        f"MetaClaw proxy on http://{bind}/v1 → "
        f"{settings.upstream.base_url or '(no upstream configured)'}"
    )
    server.run()


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
    settings.paths.prefect.mkdir(parents=True, exist_ok=True)  # Prefect won't create parents
    apply_env(prefect_env(settings.paths.prefect, _prefect_url(prefect_url)))
    flows = importlib.import_module("flows.deployments").FLOWS
    if flow not in flows:
        err_console.print(f"[red]unknown flow {flow!r}[/red]; flows: {', '.join(sorted(flows))}")
        raise typer.Exit(2)
    result = flows[flow](**params)
    console.print_json(json.dumps(result, default=str))


@app.command()
def status() -> None:
    """Ledger counts, proxy health, and the policy server (engine, queue, Tinker state)."""
    from metaclaw.ledger import TABLES
    from metaclaw.ledger import query as run_query

    settings = load_settings()
    table = Table("table", "rows", title=f"ledger at {settings.paths.home}")
    for name in TABLES:
        _, rows = run_query(settings.paths, f"SELECT count(*) FROM {name}")
        table.add_row(name, str(rows[0][0]))
    console.print(table)
    _dead_letters_status(settings)
    from metaclaw.scoring.scorer import status_line  # scoring: judge–human agreement

    console.print(status_line(settings))
    from metaclaw.scoring.adaptive import status_line as reward_model_status

    console.print(reward_model_status(settings))
    from metaclaw.costs.overview import cost_status

    for line in cost_status(settings):
        console.print(line, markup=False, highlight=False)
    from metaclaw.training.report import status_line as training_status

    _, latest = run_query(
        settings.paths, "SELECT metrics FROM train_steps ORDER BY ts DESC LIMIT 1"
    )
    console.print(training_status(json.loads(latest[0][0]) if latest else None))
    url = f"http://{settings.proxy.host}:{settings.proxy.port}/healthz"
    try:
        health = httpx.get(url, timeout=2).json()
        console.print(f"proxy {url}: [green]{health['status']}[/green] {health['ledger']}")
    except (httpx.HTTPError, ValueError):
        console.print(f"proxy {url}: [yellow]not running[/yellow]")
    from metaclaw.serving.health import policy_status_line

    console.print(policy_status_line(settings), markup=False, highlight=False)


def _dead_letters_status(settings: Any) -> None:
    """Rows ingest could not store are kept aside; say so, or nobody notices."""
    from metaclaw.ledger.deadletter import dead_letter_summary

    dead = dead_letter_summary(settings.paths)
    if not dead.rows:
        console.print("dead letters: none")
        return
    console.print(
        f"[yellow]dead letters: {dead.rows} row(s) ingest could not store[/yellow], in "
        f"{dead.files} file(s) under {dead.directory}",
        highlight=False,
    )
    for reason in dead.reasons:
        console.print(f"  {reason}", markup=False, highlight=False)


@app.command()
def up(
    proxy_port: Annotated[int | None, typer.Option(help="Proxy port (default proxy.port).")] = None,
    prefect_port: Annotated[
        int, typer.Option(help="Prefect server/UI port.")
    ] = DEFAULT_PREFECT_PORT,
) -> None:
    """The main job: Prefect server, proxy, and every deployment on its schedule. Ctrl-C stops."""
    from metaclaw.main_job import run_main_job

    settings = load_settings()
    try:
        run_main_job(settings, proxy_port or settings.proxy.port, prefect_port, console)
    except RuntimeError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None


def _replay_summary(summary: Any, found: Any) -> None:
    table = Table("", "count", title="replay", show_header=False)
    for label, value in (
        ("files imported", summary.files),
        ("files already imported (skipped)", summary.resumed),
        ("sessions", summary.sessions),
        ("turns", summary.turns),
        ("feedback", summary.feedback),
        ("turns before --since (left out)", summary.before_since),
        ("records skipped (see below)", summary.skipped),
        ("turns lost with them", summary.turns_lost),
        ("files that are not logs (ignored)", len(found.ignored)),
    ):
        table.add_row(label, str(value))
    console.print(table)
    shown = summary.problems[:20]
    if shown:
        err_console.print("[yellow]skipped[/yellow] (file:line: reason):")
        for problem in shown:
            err_console.print(f"  {problem}", markup=False, highlight=False)
        if summary.skipped > len(shown):
            err_console.print(f"  … and {summary.skipped - len(shown)} more")


@app.command()
def replay(
    paths: Annotated[
        list[Path], typer.Argument(help="Log files or directories (searched recursively).")
    ],
    fmt: Annotated[
        str,
        typer.Option(
            "--format", help="auto | openclaw | openclaw-sqlite | openclaw-trajectory | openai"
        ),
    ] = "auto",
    since: Annotated[
        str | None, typer.Option(help="Only turns at or after this time (ISO date or time).")
    ] = None,
) -> None:
    """Import historical conversation logs into the ledger (idempotent; resumes after a crash)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from metaclaw.replay import FORMATS, Importer, discover, parse_ts

    settings = load_settings()
    if fmt != "auto" and fmt not in FORMATS:
        err_console.print(f"[red]unknown format {fmt!r}[/red]; formats: auto, {', '.join(FORMATS)}")
        raise typer.Exit(2)
    since_us = parse_ts(since) if since else None
    if since and since_us is None:
        err_console.print(f"[red]--since {since!r} is not a date or time[/red] (e.g. 2026-03-01)")
        raise typer.Exit(2)
    with err_console.status("looking for logs …"):
        found = discover(paths, fmt, settings.replay.max_record_bytes)
    for error in found.errors:
        err_console.print(f"[red]not a log:[/red] {error}", highlight=False)
    progress = Progress(
        TextColumn("importing"),
        BarColumn(),
        DownloadColumn(),
        TextColumn("{task.fields[turns]} turns"),
        TimeElapsedColumn(),
        console=err_console,
    )
    with progress:
        task = progress.add_task("import", total=sum(s.size for s in found.sources), turns=0)

        def advance(summary: Any, size: int) -> None:
            progress.update(task, advance=size, turns=summary.turns)

        importer = Importer(settings, since=since_us, on_progress=advance)
        summary = importer.import_all(found.sources)
    _replay_summary(summary, found)
    if found.errors:
        raise typer.Exit(2)
    if summary.failed_files:
        raise typer.Exit(1)


@app.command("policy-server")
def policy_server(
    host: Annotated[str | None, typer.Option(help="Bind address (default policy.host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default policy.port).")] = None,
) -> None:
    """Run the policy server (OpenAI-compatible): the packaged model + promoted LoRA, or, with
    policy.engine=tinker, a Tinker sampler on the promoted sampler weights."""
    from metaclaw.models import ModelNotAvailableError
    from metaclaw.proxy.guard import OpenBindError
    from metaclaw.serving.server import (
        build_engine,
        build_server,
        check_policy_bind,
        policy_model_name,
    )
    from metaclaw.training.factory import TrainingConfigError

    settings = load_settings()
    try:
        check_policy_bind(settings, host)
    except OpenBindError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    try:
        with err_console.status(f"loading {policy_model_name(settings)} …") as spinner:
            engine = build_engine(settings, notify=lambda m: spinner.update(m))
    except (ModelNotAvailableError, TrainingConfigError) as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    bind = f"{host or settings.policy.host}:{port or settings.policy.port}"
    err_console.print(
        f"MetaClaw policy server on http://{bind}/v1 — {engine.name} "
        f"(checkpoint: {engine.policy.checkpoint_id or 'base model'})"
    )
    build_server(settings, engine, host, port).run()


from metaclaw.skills.cli import app as skills_app  # noqa: E402  (the `skills` sub-commands)

app.add_typer(skills_app, name="skills")

from metaclaw.deploy.cli import app as checkpoints_app  # noqa: E402  (`checkpoints` commands)

app.add_typer(checkpoints_app, name="checkpoints")


from metaclaw.config_cli import app as config_app  # noqa: E402  (`config show|set`)

app.add_typer(config_app, name="config")

from metaclaw.connect.cli import app as connect_app  # noqa: E402  (`connect [openclaw]`)

app.add_typer(connect_app, name="connect")

from metaclaw.agents.cli import app as agents_app  # noqa: E402  (`agents add|list|...`)

app.add_typer(agents_app, name="agents")


@app.command()
def demo(
    questions: Annotated[
        int, typer.Option(help="Teaching questions per round (the gate's prompts too).")
    ] = 24,
    rounds: Annotated[int, typer.Option(help="Teaching rounds, each followed by the loop.")] = 2,
    held_out: Annotated[int, typer.Option(help="Held-out questions measured before/after.")] = 12,
    max_tokens: Annotated[int, typer.Option(help="Reply length cap (room for a sign-off).")] = 64,
    parallel: Annotated[int, typer.Option(help="Scripted users asking at once.")] = 6,
    proxy_port: Annotated[int | None, typer.Option(help="Proxy port.")] = None,
    preference: Annotated[
        str,
        typer.Option(
            help="What the scripted user wants: opener, sign_off, terse, brevity, "
            "one_sentence or french.",
        ),
    ] = "opener",
) -> None:
    """A scripted user teaches a preference; held-out compliance before and after the loop."""
    import os
    import time

    from metaclaw import demo as script
    from metaclaw.deploy.curve import load_curve
    from metaclaw.serving.defaults import needs_policy_server
    from metaclaw.serving.launch import start_configured_policy_server
    from metaclaw.supervisor import apply_env, prefect_env, start_proxy

    try:
        pref = script.preference(preference)
    except ValueError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    for key, value in script.DEMO_ENV.items():
        os.environ.setdefault(key, value)
    settings = load_settings()
    paths = settings.paths
    taught = script.QUESTIONS[:questions]
    measured = script.EVAL_QUESTIONS[:held_out]
    prompts = paths.home / "demo-gate-prompts.jsonl"
    paths.home.mkdir(parents=True, exist_ok=True)
    prompts.write_text(script.gate_prompts_jsonl(taught))
    os.environ.setdefault("METACLAW_DEPLOY__PROMPTS_FILE", str(prompts.resolve()))
    paths.prefect.mkdir(parents=True, exist_ok=True)
    apply_env(prefect_env(paths.prefect, _prefect_url(None)))
    started = time.monotonic()
    children = []
    port = proxy_port or settings.proxy.port
    try:
        if needs_policy_server(settings):
            with console.status("starting the local policy server …"):
                children.append(start_configured_policy_server(settings))
        with console.status("starting the proxy …"):
            children.append(start_proxy(paths, port))
        url = f"http://{settings.proxy.host}:{port}"
        teacher = script.ScriptedUser(
            url, max_tokens, settings.training.temperature, pref, restate=False, parallel=parallel
        )
        greedy = script.ScriptedUser(url, max_tokens, 0.0, pref, restate=False)
        with console.status("held-out questions, before …"):
            before = greedy.ask("before", measured, teach=False)
        _print_round(before, measured)
        pipeline = importlib.import_module("flows.pipeline").pipeline_flow
        results: dict[str, Any] = {}
        for n in range(1, rounds + 1):
            with console.status(f"round {n}: the scripted user asks, corrects and rates …"):
                round_ = teacher.ask(f"teach{n}", taught, teach=True)
            try:
                loop = "ingest → score → diagnose → evolve → train → deploy"
                with console.status(f"round {n}: {loop}"):
                    results = pipeline()
                outcome = (
                    f"train: {_train_line(results.get('train'))}; "
                    f"{script.deploy_line(results.get('deploy'))}"
                )
            except Exception as exc:  # a failed step ends its round, not the measurement
                outcome = (
                    f"the loop stopped ({type(exc).__name__}: {exc}); "
                    "the policy the gate promoted before keeps serving"
                )
            console.print(
                f"round {n}: teaching compliance {round_.rate:.0%} "
                f"({sum(round_.complied)}/{len(round_.complied)}); {outcome}"
            )
        with console.status("held-out questions, after …"):
            after = greedy.ask("after", measured, teach=False)
        _print_round(after, measured)
        for line in script.outcome_lines(paths, before, after):
            console.print(line)
        console.print(curve_table(load_curve(paths)))
        console.print(f"demo wall time: {time.monotonic() - started:.0f} s")
    except RuntimeError as exc:
        err_console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    finally:
        for child in reversed(children):
            child.stop()


def _print_round(measured: Any, questions: tuple[str, ...]) -> None:
    for question, reply, ok in zip(questions, measured.replies, measured.complied, strict=True):
        console.print(
            f"[bold]{question}[/bold] → {reply.strip()[:90]!r} "
            f"{'[green]✓[/green]' if ok else '[red]✗[/red]'}"
        )


def _train_line(result: Any) -> str:
    """The train flow's steps in one line (`flows/train.py` returns steps, failures, stalls)."""
    if not isinstance(result, dict):
        return str(result)
    parts = [f"{len(result.get('steps') or [])} step(s)"]
    if result.get("failed"):
        parts.append(f"{len(result['failed'])} failed")
    parts += [f"stalled: {reason}" for reason in result.get("stalled") or []]
    return ", ".join(parts)[:160]


def curve_table(points: list[Any]) -> Table:
    """The learning curve (users' mean reward per served policy) as a rich table."""
    from metaclaw.deploy.curve import bar

    table = Table(title="users' mean reward per served policy (oldest first)")
    for column in ("policy", "turns (rated)", "mean reward", "", "gate"):
        table.add_column(column)
    for p in points:
        gate = p.status or "-"
        if p.wins is not None:
            gate += f" ({p.wins}–{p.losses}–{p.ties})"
        mean = "-" if p.mean_reward is None else f"{p.mean_reward:+.2f}"
        table.add_row(p.checkpoint, f"{p.turns} ({p.rated})", mean, bar(p.mean_reward), gate)
    return table


def main() -> None:
    app()


if __name__ == "__main__":
    main()
