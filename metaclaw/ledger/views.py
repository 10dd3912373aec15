"""Derived views: SQL over the table views, created in this order on every connection.

Each part of MetaClaw that needs a combined reading of the ledger (e.g. the training reward per
turn) registers its views here, so every reader — flows, `metaclaw sql`, tests — sees the same
one. Why a registry rather than an import: the ledger is the bottom floor and must not know the
parts above it; the package root (`metaclaw/__init__.py`) registers them, so any import of
MetaClaw has them before its first `connect()`.

A view that needs more than SQL over the tables (the `costs` view prices calls with the price
table in force) registers a setup: it runs on every connection before the views are created,
with the connection's `LedgerPaths`, and adds the functions or small tables the view reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import duckdb

from metaclaw.config import LedgerPaths

ConnectionSetup = Callable[[duckdb.DuckDBPyConnection, LedgerPaths], None]

DERIVED_VIEWS: dict[str, str] = {}
CONNECTION_SETUPS: list[ConnectionSetup] = []


def register_views(views: Mapping[str, str]) -> None:
    """Add views (name → SELECT), in order; registering the same SQL again is a no-op."""
    for name, sql in views.items():
        known = DERIVED_VIEWS.get(name)
        if known is not None and known != sql:
            raise ValueError(f"derived view {name!r} is already registered with other SQL")
        DERIVED_VIEWS[name] = sql


def register_setup(setup: ConnectionSetup) -> None:
    """Run `setup(con, paths)` on every connection before the derived views; once per function."""
    if setup not in CONNECTION_SETUPS:
        CONNECTION_SETUPS.append(setup)
