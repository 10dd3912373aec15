"""Which LoRA checkpoint to serve: read from the ledger's `checkpoints` table.

The table holds one row per state change; a checkpoint's latest row is its state, and exactly
one checkpoint is promoted at a time (docs/deploy.md). The training backend writes local adapters
under `METACLAW_HOME/checkpoints/<checkpoint_id>/`; Tinker checkpoints (`tinker://…`) cannot
be served by the local policy server.
"""

from __future__ import annotations

from pathlib import Path

from metaclaw.config import LedgerPaths
from metaclaw.ledger import query

LATEST = """
SELECT checkpoint_id, path, status, ts FROM (
  SELECT checkpoint_id, path, status, ts,
         row_number() OVER (PARTITION BY checkpoint_id ORDER BY ts DESC, event_id DESC) AS rn
  FROM checkpoints) WHERE rn = 1
"""


class CheckpointError(ValueError):
    """A checkpoint that cannot be served locally; the message says why."""


def checkpoints_dir(home: Path) -> Path:
    return Path(home) / "checkpoints"


def promoted_checkpoint(paths: LedgerPaths) -> tuple[str, str | None] | None:
    """(checkpoint_id, path) of the promoted checkpoint, or None when there is none."""
    _, rows = query(
        paths,
        f"SELECT checkpoint_id, path FROM ({LATEST}) WHERE status = "
        "'promoted' ORDER BY ts DESC LIMIT 1",
    )
    if not rows:
        return None
    checkpoint_id, path = rows[0]
    return str(checkpoint_id), (str(path) if path else None)


def ledger_path(paths: LedgerPaths, checkpoint_id: str) -> str | None:
    """The path the ledger records for a checkpoint (its latest row), if any."""
    escaped = checkpoint_id.replace("'", "''")
    _, rows = query(paths, f"SELECT path FROM ({LATEST}) WHERE checkpoint_id = '{escaped}'")
    return str(rows[0][0]) if rows and rows[0][0] else None


def adapter_dir(home: Path, checkpoint_id: str | None, recorded: str | None) -> Path:
    """Where a checkpoint's adapter lives: the recorded path, else the conventional one."""
    if recorded:
        if recorded.startswith("tinker://"):
            raise CheckpointError(
                f"checkpoint {checkpoint_id!r} lives on Tinker ({recorded}); the local policy "
                "server serves local LoRA directories only"
            )
        path = Path(recorded).expanduser()
        if not path.is_absolute() and not path.exists():
            path = Path(home) / path
        return path
    if not checkpoint_id:
        raise CheckpointError("give a checkpoint_id or a path")
    if "/" in checkpoint_id or checkpoint_id in (".", ".."):
        raise CheckpointError(f"checkpoint_id {checkpoint_id!r} is not a plain name")
    return checkpoints_dir(home) / checkpoint_id
