"""One line about the running policy server for `metaclaw status`, read from its /healthz.

Why: with the Tinker engine a slow reply is usually Tinker's queue (a rate limit or short
capacity the SDK reports) or the service failing; the server records both, and this line puts
them where an operator looks first, next to the ledger counts.
"""

from __future__ import annotations

from typing import Any

import httpx

from metaclaw.config import Settings
from metaclaw.endpoints import policy_base_url


def policy_status_line(settings: Settings, timeout_s: float = 2.0) -> str:
    """`policy server <url>: ok · engine … · checkpoint … · queued … [· tinker …]`."""
    url = policy_base_url(settings).removesuffix("/v1") + "/healthz"
    try:
        health = httpx.get(url, timeout=timeout_s, trust_env=False).json()
    except (httpx.HTTPError, ValueError):
        return f"policy server {url}: not running"
    return f"policy server {url}: " + " · ".join(_parts(health))


def _parts(health: dict[str, Any]) -> list[str]:
    parts = [
        str(health.get("status")),
        f"engine {health.get('engine', 'local')}",
        f"checkpoint {health.get('checkpoint') or 'base model'}",
        f"active {health.get('active')} · queued {health.get('queued')}",
    ]
    tinker = health.get("tinker")
    if isinstance(tinker, dict):
        state = tinker.get("queue_state")
        if state and state != "active":
            parts.append(f"tinker queue {state} ({tinker.get('queue_reason') or 'no reason'})")
        stats = health.get("stats") or {}
        failures = int(stats.get("tinker_timeouts", 0)) + int(stats.get("tinker_errors", 0))
        if failures:
            parts.append(
                f"tinker failures {failures} (timeouts {stats.get('tinker_timeouts', 0)}); "
                f"last: {tinker.get('last_error')}"
            )
    return parts
