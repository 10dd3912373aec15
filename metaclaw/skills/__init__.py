"""The skill library: versioned skills in LanceDB, retrieved and injected on the proxy's hot path,
scored by the rewards of the turns they were injected into, diagnosed and evolved by flows.

Public API (docs/skills.md): `SkillLibrary.open(settings)` → `library.select(messages)` →
`Injection`; `inject(messages, block)` / `inject_system(system, block)`; `extract_query`;
`SkillStore` for reads and serialized writes. Names load lazily, so `import metaclaw.cli` (which
registers the `skills` sub-commands) does not pay for numpy or LanceDB.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

os.environ.setdefault("LANCEDB_LOG", "error")  # LanceDB's Rust WARN lines go to stderr otherwise

_EXPORTS = {
    "SkillLibrary": "metaclaw.skills.library",
    "Injection": "metaclaw.skills.library",
    "inject": "metaclaw.skills.query",
    "inject_system": "metaclaw.skills.query",
    "extract_query": "metaclaw.skills.query",
    "SkillStore": "metaclaw.skills.store",
    "Skill": "metaclaw.skills.model",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metaclaw.skills' has no attribute {name!r}")
