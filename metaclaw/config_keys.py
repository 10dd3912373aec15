"""The keys of the configuration: flat aliases, the dotted keys a settings model accepts, and the
error that names the closest valid key when a key is unknown.

Why apart from `metaclaw/config.py`: that module declares the settings; this one reasons about
their names (a typo must fail loudly, naming what was meant) for the settings validator and for
`metaclaw config set` (metaclaw/config_tools.py). Each function takes the model it reasons
about, so nothing here imports the settings and the two modules depend one way.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

# Flat keywords of MetaClawConfig(...) (and top-level TOML keys) → (section, key).
FRIENDLY_KEYS: dict[str, tuple[str, str]] = {
    "use_skills": ("skills", "enabled"),
    "enable_skill_evolution": ("flows", "evolve_enabled"),
    "azure_openai_deployment": ("azure", "deployment"),
    "model_name": ("training", "base_model"),
    "lora_rank": ("training", "lora_rank"),
    "batch_size": ("training", "batch_size"),
    "loss_fn": ("training", "loss_fn"),
    "learning_rate": ("training", "learning_rate"),
    "training_backend": ("training", "backend"),
}
_SECRET_WORDS = ("key", "token", "secret", "password")


def expand_friendly(data: dict[str, Any]) -> dict[str, Any]:
    """`{"lora_rank": 8}` → `{"training": {"lora_rank": 8}}` (a flat keyword beats the same
    key given inside its section in the same layer)."""
    out = dict(data)
    for flat, (section, key) in FRIENDLY_KEYS.items():
        if flat in out:
            value = out.pop(flat)
            current = out.get(section)
            if isinstance(current, BaseModel):
                current = current.model_dump(exclude_unset=True)
            out[section] = {**(current or {}), key: value}
    return out


def _section(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The model of section `name` (None for a plain field such as `home`, or no field)."""
    info = model.model_fields.get(name)
    annotation = info.annotation if info else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def valid_keys(model: type[BaseModel]) -> list[str]:
    """Every settable dotted key of `model` (`home`, `proxy.port`, …)."""
    keys: list[str] = []
    for name in model.model_fields:
        section = _section(model, name)
        if section:
            keys.extend(f"{name}.{sub}" for sub in section.model_fields)
        else:
            keys.append(name)
    return keys


def closest_key(key: str, keys: Sequence[str]) -> str | None:
    """The valid key a typo most likely meant (same leaf name first, then difflib)."""
    if key in FRIENDLY_KEYS:
        return ".".join(FRIENDLY_KEYS[key])
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if len(same_leaf) == 1:
        return same_leaf[0]
    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if close:
        return close[0]
    leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
    close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.7)
    return leaves[close[0]] if close else None


def unknown_key_error(key: str, keys: Sequence[str]) -> str:
    hint = closest_key(key, keys)
    return f"unknown configuration key {key!r}" + (f" (did you mean {hint!r}?)" if hint else "")


def unknown_keys(model: type[BaseModel], data: dict[str, Any]) -> list[str]:
    """The dotted keys of `data` (sections one level deep) that `model` does not have."""
    unknown: list[str] = []
    for name, value in data.items():
        if name not in model.model_fields:
            unknown.append(name)
            continue
        section = _section(model, name)
        if isinstance(value, dict) and section:
            unknown.extend(f"{name}.{k}" for k in value if k not in section.model_fields)
    return unknown


def mask_secrets_in_place(data: Any) -> None:
    """Blank every value whose key names a secret, before pydantic quotes the input back."""
    if isinstance(data, dict):
        for name, value in data.items():
            if isinstance(value, dict):
                mask_secrets_in_place(value)
            elif any(w in str(name).lower() for w in _SECRET_WORDS) and value is not None:
                data[name] = "**********"
            elif isinstance(value, list):
                mask_secrets_in_place(value)
    elif isinstance(data, list):
        for item in data:
            mask_secrets_in_place(item)
