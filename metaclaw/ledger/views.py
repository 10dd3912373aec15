"""Derived views: SQL over the table views, created in this order on every connection.

Each part of MetaClaw that needs a combined reading of the ledger (e.g. the training reward per
turn) registers its views here, so every reader — flows, `metaclaw sql`, tests — sees the same
one. Why a registry rather than an import: the ledger is the bottom floor and must not know the
parts above it; the package root (`metaclaw/__init__.py`) registers them, so any import of
MetaClaw has them before its first `connect()`.
"""

from __future__ import annotations

from collections.abc import Mapping

DERIVED_VIEWS: dict[str, str] = {}


def register_views(views: Mapping[str, str]) -> None:
    """Add views (name → SELECT), in order; registering the same SQL again is a no-op."""
    for name, sql in views.items():
        known = DERIVED_VIEWS.get(name)
        if known is not None and known != sql:
            raise ValueError(f"derived view {name!r} is already registered with other SQL")
        DERIVED_VIEWS[name] = sql
