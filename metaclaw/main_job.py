"""`metaclaw up`: the whole system as one command.

Order matters: the Prefect server first (flows need its API), then the local policy server when
some role runs on it (the embedded default: no upstream or judge configured), then the proxy,
then the server-side objects (concurrency limits, crash automation), then every deployment is
served from this process. Children live in their own process groups and are stopped in reverse
order on Ctrl-C/SIGTERM, so a second `up` starts cleanly. Prefect is imported lazily (the
library never imports it at module level).
"""

from __future__ import annotations

import importlib
import threading
import time
from contextlib import suppress

from rich.console import Console

from metaclaw.config import Settings
from metaclaw.supervisor import Child, apply_env, prefect_env, start_prefect_server, start_proxy

STATUS_EVERY_S = 60.0


def status_line(settings: Settings) -> str:
    """Ledger counts for the live status line (cheap: counts only)."""
    from metaclaw.ledger import query

    _, rows = query(
        settings.paths,
        "SELECT (SELECT count(*) FROM turns), (SELECT count(*) FROM rewards), "
        "(SELECT count(DISTINCT skill_id) FROM skill_events), "
        "(SELECT count(*) FROM train_steps), "
        "(SELECT arg_max(checkpoint_id, ts) FILTER (WHERE status = 'promoted') FROM checkpoints)",
    )
    turns, rewards, skills, steps, promoted = rows[0]
    return (
        f"turns {turns} · rewards {rewards} · skills {skills} · train steps {steps} · "
        f"promoted {promoted or 'base model'}"
    )


class StatusTicker:
    """Prints the status line every `STATUS_EVERY_S` seconds until stopped."""

    def __init__(self, settings: Settings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metaclaw-status", daemon=True)

    def start(self) -> StatusTicker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(STATUS_EVERY_S):
            with suppress(Exception):  # a status line must never take the main job down
                stamp = time.strftime("%H:%M:%S")
                self.console.print(f"[dim]{stamp} {status_line(self.settings)}[/dim]")


def run_main_job(settings: Settings, proxy_port: int, prefect_port: int, console: Console) -> None:
    from metaclaw.serving.defaults import describe_defaults, needs_policy_server
    from metaclaw.serving.launch import start_configured_policy_server

    paths = settings.paths
    paths.prefect.mkdir(parents=True, exist_ok=True)
    apply_env(prefect_env(paths.prefect, f"http://127.0.0.1:{prefect_port}/api"))
    children: list[Child] = []
    ticker: StatusTicker | None = None
    try:
        with console.status(f"starting the Prefect server (SQLite under {paths.prefect}) …"):
            children.append(start_prefect_server(paths, prefect_port))
        if needs_policy_server(settings):
            with console.status(
                "starting the local policy server (the first start converts "
                "the packaged model; about a minute) …"
            ):
                children.append(start_configured_policy_server(settings))
        with console.status("starting the proxy …"):
            children.append(start_proxy(paths, proxy_port))
        console.print(f"[bold]proxy[/bold]      http://{settings.proxy.host}:{proxy_port}/v1")
        console.print(f"[bold]Prefect UI[/bold] http://127.0.0.1:{prefect_port}")
        console.print(f"[bold]data[/bold]       {paths.home.resolve()}  (logs in {paths.logs})")
        for line in describe_defaults(settings):
            console.print(f"  {line}")
        for line in importlib.import_module("flows.bootstrap").bootstrap():
            console.print(f"created {line}")
        console.print("serving deployments; Ctrl-C stops everything")
        ticker = StatusTicker(settings, console).start()
        deployments = importlib.import_module("flows.deployments").build_deployments(settings)
        importlib.import_module("prefect").serve(*deployments, print_starting_message=False)
    except KeyboardInterrupt:
        pass
    finally:
        if ticker is not None:
            ticker.stop()
        for child in reversed(children):
            child.stop()
        console.print("stopped")
