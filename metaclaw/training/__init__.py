"""LoRA training from the ledger: backends (Tinker, local), losses, samples, the train step.

Public API (imported lazily: torch, transformers and tinker load only when used):
- `TrainingBackend` (protocol), `LocalBackend`, `TinkerBackend` — backend.py, local.py,
  tinker_backend.py
- `Trainer`, `StepOutcome` — trainer.py (one step from the ledger to a candidate checkpoint)
- `make_backend`, `make_teacher` — factory.py
- loss formulas — losses.py; datum construction — datums.py; routing/advantages — samples.py
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "TrainingBackend": "metaclaw.training.backend",
    "LocalBackend": "metaclaw.training.local",
    "TinkerBackend": "metaclaw.training.tinker_backend",
    "Trainer": "metaclaw.training.trainer",
    "StepOutcome": "metaclaw.training.trainer",
    "make_backend": "metaclaw.training.factory",
    "make_teacher": "metaclaw.training.factory",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metaclaw.training' has no attribute {name!r}")
