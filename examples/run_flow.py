"""Trigger a MetaClaw flow run on demand from Python (the same as `metaclaw run FLOW`).

    python examples/run_flow.py ingest
    python examples/run_flow.py score --param limit=100

When `metaclaw up` is running, the run goes to its Prefect server and shows in its UI
(http://127.0.0.1:4200); otherwise Prefect starts a temporary server for this one run.
Flows are idempotent, so triggering one twice never double-counts.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

from metaclaw import MetaClawConfig


def run_flow(name: str = "ingest", **params: Any) -> Any:
    """Run one flow now, in this process, and return its result.

    Only the one flow's module is imported (`flows/<name>.py`, flow `<name>_flow`), which
    imports Prefect: call this after the environment is set.
    """
    try:
        module = importlib.import_module(f"flows.{name}")
    except ModuleNotFoundError:
        known = sorted(p.stem for p in Path(__file__).resolve().parents[1].glob("flows/*.py"))
        raise SystemExit(f"unknown flow {name!r}; flows: {', '.join(known)}") from None
    return getattr(module, f"{name}_flow")(**params)


def main(argv: list[str]) -> None:
    from metaclaw.cli import _prefect_url, parse_params
    from metaclaw.supervisor import apply_env, prefect_env

    name = argv[0] if argv and not argv[0].startswith("--") else "ingest"
    pairs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--param"]
    settings = MetaClawConfig()
    apply_env(prefect_env(settings.paths.prefect, _prefect_url(None)))  # `metaclaw up`'s, if any
    print(json.dumps(run_flow(name, **parse_params(pairs)), default=str, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
