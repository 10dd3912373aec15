"""The held-out evaluation split: which turns are never trained on, so the gate can measure.

Why a hash of `turn_id`: membership must be stable (the same turn is held out in every run, on
every machine, before and after a restart), cheap to decide anywhere (the trainer filters with
it, the deploy flow selects with it, SQL can apply it), and need no stored list that could be
lost or drift. A turn is held out when the first 32 bits of sha256(`salt:turn_id`), read as a
fraction of 2^32, fall below `deploy.eval_fraction`. Every evaluation records the split it used
(`split_id`), so verdicts made under different splits are never compared unknowingly.

Contract for training: the sample builder excludes turns for which `is_eval_turn` is true
(Python) or `eval_turn_sql` holds (DuckDB); both give identical answers (a test checks).
"""

from __future__ import annotations

import hashlib

from metaclaw.config import DeploySettings, Settings

HASH_BITS = 32


def _section(settings: Settings | DeploySettings) -> DeploySettings:
    return settings.deploy if isinstance(settings, Settings) else settings


def split_fraction(turn_id: str, salt: str) -> float:
    """Where a turn falls in [0, 1): uniform over turn ids, fixed for a given salt."""
    digest = hashlib.sha256(f"{salt}:{turn_id}".encode()).hexdigest()
    return int(digest[: HASH_BITS // 4], 16) / 2**HASH_BITS


def is_eval_turn(turn_id: str, settings: Settings | DeploySettings) -> bool:
    """True when the turn belongs to the held-out evaluation set (never train on it). Pure."""
    cfg = _section(settings)
    return split_fraction(turn_id, cfg.split_salt) < cfg.eval_fraction


def eval_turn_sql(settings: Settings | DeploySettings, column: str = "turn_id") -> str:
    """The same predicate as a DuckDB boolean expression over `column` (for ledger queries)."""
    cfg = _section(settings)
    salt = cfg.split_salt.replace("'", "''")
    threshold = int(cfg.eval_fraction * 2**HASH_BITS)
    # fraction < f  ⇔  int32bits < f·2^32  ⇔  int32bits < ceil(f·2^32) for integers
    if threshold < cfg.eval_fraction * 2**HASH_BITS:
        threshold += 1
    return (f"(CAST(('0x' || substr(sha256('{salt}:' || {column}), 1, {HASH_BITS // 4})) "
            f"AS UBIGINT) < {threshold})")


def split_id(settings: Settings | DeploySettings) -> str:
    """A label of the split in force, recorded with every evaluation."""
    cfg = _section(settings)
    return f"sha256/{cfg.split_salt}/{cfg.eval_fraction:g}"
