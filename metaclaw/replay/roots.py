"""Which folders a backfill may read.

The backfill flow's `path` is a parameter of a flow run, which anything that can reach the Prefect
API can set: without a check, `backfill(path="/home/me/.ssh")` would import arbitrary local files
and send them to the judge and the critic. So every named path must resolve (symlinks followed)
to a place under `replay.allowed_roots` or `METACLAW_HOME/imports`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class PathNotAllowed(ValueError):
    """A backfill path outside the allowed roots; the message names the setting."""


def allowed_roots(roots: Iterable[Path], home: Path) -> list[Path]:
    return [Path(r).expanduser().resolve() for r in [*roots, Path(home) / "imports"]]


def check_paths(paths: Iterable[str], roots: Iterable[Path], home: Path) -> None:
    """Raise PathNotAllowed for the first path outside every allowed root."""
    allowed = allowed_roots(roots, home)
    for raw in paths:
        resolved = Path(raw).expanduser().resolve()
        if not any(resolved.is_relative_to(root) for root in allowed):
            raise PathNotAllowed(
                f"{raw} is outside the folders a backfill may read "
                f"({', '.join(str(r) for r in allowed)}); add its folder to "
                "replay.allowed_roots (METACLAW_REPLAY__ALLOWED_ROOTS) or copy the logs into "
                "METACLAW_HOME/imports"
            )
