"""What the configuration is and where each value came from; editing `metaclaw.toml` safely.

Pure logic over `MetaClawConfig` (metaclaw/config.py) for `metaclaw config show|set`
(metaclaw/config_cli.py) and for the snapshot every train step records, so a run can be
reproduced from the ledger alone. Secrets are masked in everything this module returns:
`SecretStr` fields, and credentials written into a URL (`https://user:pw@host`,
`?api-key=…`), which some providers document as the way to pass a key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import EnvSettingsSource, TomlConfigSettingsSource

from metaclaw.config import AzureStandardEnvSource, Settings, config_file_path
from metaclaw.config_keys import FRIENDLY_KEYS, expand_friendly, unknown_key_error, valid_keys

MASK = "**********"
# Highest precedence first: the one rule documented in metaclaw/config.py.
SOURCES = ("arg", "env", "env:azure", "file", "default")


class ConfigKeyError(KeyError):
    """An unknown key; the message names the closest valid one."""

    def __str__(self) -> str:
        return str(self.args[0])


def _is_secret_field(key: str) -> bool:
    section, _, leaf = key.rpartition(".")
    model: type[BaseModel] = Settings
    if section:
        annotation = Settings.model_fields[section].annotation
        assert isinstance(annotation, type)
        model = annotation
    info = model.model_fields.get(leaf)
    text = str(info.annotation) if info else ""
    return "SecretStr" in text


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"proxy": {"port": 1}}` → `{"proxy.port": 1}` (sections only; list values stay whole)."""
    flat: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, Mapping) and not prefix:
            flat.update(flatten(value, f"{key}."))
        else:
            flat[key] = value
    return flat


_URL = re.compile(r"(?P<scheme>\b[a-z][a-z0-9+.-]*://)(?P<userinfo>[^@/?#\s]*@)?", re.I)
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;][^=&#\s]*(?:key|token|secret|passw(?:or)?d|pwd|sig|signature|auth|"
    r"credential|code)[^=&#\s]*=)(?P<value>[^&#\s]*)",
    re.I,
)


def mask_url(text: str) -> str:
    """`text` with the user info and the secret-named query values of every URL masked."""
    if "://" not in text:
        return text
    text = _URL.sub(lambda m: m["scheme"] + (MASK + "@" if m["userinfo"] else ""), text)
    return _SECRET_PARAM.sub(lambda m: m["name"] + MASK, text)


def mask_urls(value: Any) -> Any:
    """Every string inside a JSON-like value passed through `mask_url`."""
    if isinstance(value, str):
        return mask_url(value)
    if isinstance(value, Mapping):
        return {k: mask_urls(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask_urls(v) for v in value]
    return value


def mask(key: str, value: Any) -> Any:
    """Secret fields show as a mask whatever their value type (a set secret is never shown);
    credentials inside URLs are masked in every other field."""
    if value is None or value == []:
        return value
    if isinstance(value, SecretStr) or _is_secret_field(key):
        return [MASK] * len(value) if isinstance(value, list) else MASK
    return mask_urls(value)


def effective(settings: Settings) -> dict[str, Any]:
    """Every key's effective value, JSON-typed, secrets masked."""
    dumped = settings.model_dump(mode="json")
    return {k: mask(k, v) for k, v in flatten(dumped).items()}


def config_snapshot(settings: Settings) -> dict[str, Any]:
    """The whole effective configuration (masked, nested) plus its hash: what a train step
    records so the run can be reproduced (`metaclaw config show` of that moment)."""
    config = mask_urls(settings.model_dump(mode="json"))
    body = json.dumps(config, sort_keys=True, default=str)
    return {"sha256": hashlib.sha256(body.encode()).hexdigest()[:16], "values": config}


def source_layers(init_kwargs: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """The keys each source provides, flattened: arg / env / env:azure / file."""
    file_values = TomlConfigSettingsSource(Settings, toml_file=config_file_path())()
    return {
        "arg": flatten(expand_friendly(dict(init_kwargs or {}))),
        "env": flatten(EnvSettingsSource(Settings)()),
        "env:azure": flatten(AzureStandardEnvSource(Settings)()),
        "file": flatten(expand_friendly(file_values)),
    }


def provenance(key: str, layers: Mapping[str, Mapping[str, Any]]) -> str:
    """The highest-precedence source that sets `key`, else "default"."""
    for source in SOURCES[:-1]:
        if key in layers.get(source, {}):
            return source
    return "default"


@dataclass(frozen=True)
class ConfigRow:
    key: str
    value: Any
    source: str


def describe(
    settings: Settings, layers: Mapping[str, Mapping[str, Any]] | None = None
) -> list[ConfigRow]:
    """`metaclaw config show`: key, masked value and where it came from, in field order."""
    layers = source_layers() if layers is None else layers
    return [ConfigRow(k, v, provenance(k, layers)) for k, v in effective(settings).items()]


def canonical_key(key: str) -> str:
    """A dotted key as written in the file; flat keywords map to their section's key."""
    if key in FRIENDLY_KEYS:
        return ".".join(FRIENDLY_KEYS[key])
    keys = valid_keys(Settings)
    if key not in keys:
        raise ConfigKeyError(unknown_key_error(key, keys))
    return key


def _parse_value(raw: str) -> Any:
    """A TOML literal when the text is one (8, true, 1.5, ["a"]), else the text itself."""
    import tomlkit

    try:
        return tomlkit.parse(f"v = {raw}")["v"].unwrap()
    except Exception:  # anything that is not a TOML literal is a plain string
        return raw


def _validation_errors(data: dict[str, Any]) -> list[str] | None:
    try:
        Settings.model_validate(data)
    except ValidationError as exc:
        return [f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors()]
    return None


def set_in_toml(text: str, key: str, raw: str) -> tuple[str, str]:
    """The file text with `key` set to `raw` (validated), and the canonical key written.

    Comments and layout of the rest of the file are kept (tomlkit). A value that does not
    validate raises ValueError naming the key and the reason; nothing is written then.
    """
    import tomlkit

    key = canonical_key(key)
    doc = tomlkit.parse(text)
    section, _, leaf = key.rpartition(".")
    candidates = [_parse_value(raw)]
    if not isinstance(candidates[0], str):
        candidates.append(raw)  # e.g. upstream.model = 123 is meant as the text "123"
    errors: list[str] = []
    for value in candidates:
        trial = tomlkit.parse(text)
        table = trial
        if section:
            if section not in trial:
                trial[section] = tomlkit.table()
            table = trial[section]
        table[leaf] = value
        errors = _validation_errors(trial.unwrap()) or []
        if not errors:
            doc = trial
            return tomlkit.dumps(doc), key
    shown = MASK if _is_secret_field(key) else repr(raw)
    raise ValueError(f"invalid value {shown} for {key}: " + "; ".join(errors))


def set_in_file(path: Path, key: str, raw: str) -> str:
    """Edit the TOML file in place (created when missing); returns the canonical key."""
    text = path.read_text() if path.exists() else ""
    new_text, canonical = set_in_toml(text, key, raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new_text)
    tmp.replace(path)
    return canonical


__all__ = [
    "ConfigKeyError",
    "ConfigRow",
    "canonical_key",
    "config_snapshot",
    "describe",
    "effective",
    "flatten",
    "mask",
    "mask_url",
    "provenance",
    "set_in_file",
    "set_in_toml",
    "source_layers",
]
