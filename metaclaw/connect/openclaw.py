"""`metaclaw connect openclaw`: make OpenClaw's model provider our proxy, reversibly.

OpenClaw reads one JSON file (`$OPENCLAW_CONFIG_PATH`, else `$OPENCLAW_STATE_DIR/openclaw.json`,
else `~/.openclaw/openclaw.json`, OpenClaw's documented lookup order). We add a provider
entry `models.providers.metaclaw` (`api: openai-completions`, our base URL and key, the model with
`compat.supportsPromptCacheKey: true` so OpenClaw sends `prompt_cache_key: "<sessionId>:0"` and
the proxy groups turns by session) and make `metaclaw/<model>` the agents' default model.

Why a backup beside the file rather than an inverse edit: `--undo` must give the user back the
exact bytes they had (comments, key order, formatting), whatever happened in between. The first
connect keeps the original (`openclaw.json.metaclaw-backup`, or a marker when there was no
file); re-running connect is idempotent and never overwrites that backup.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROVIDER = "metaclaw"
BACKUP_SUFFIX = ".metaclaw-backup"
CREATED_SUFFIX = ".metaclaw-created"  # marker: the file did not exist before connect
DEFAULT_MODEL = "metaclaw"
MASK = "**********"


class OpenClawConfigError(ValueError):
    """The OpenClaw config cannot be edited safely; the message says what to do."""


@dataclass(frozen=True)
class ConnectResult:
    path: Path
    changed: bool
    diff: str  # unified diff, API keys masked
    backup: Path | None  # where the original is kept (None on a dry run or no change)
    model: str


def openclaw_config_path(env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """The file OpenClaw itself reads, by its own environment rules."""
    env = os.environ if env is None else env
    if env.get("OPENCLAW_CONFIG_PATH"):
        return Path(env["OPENCLAW_CONFIG_PATH"]).expanduser()
    if env.get("OPENCLAW_STATE_DIR"):
        return Path(env["OPENCLAW_STATE_DIR"]).expanduser() / "openclaw.json"
    return (home or Path.home()) / ".openclaw" / "openclaw.json"


def _primary(config: Mapping[str, Any]) -> str | None:
    model = ((config.get("agents") or {}).get("defaults") or {}).get("model")
    if isinstance(model, str):
        return model
    if isinstance(model, Mapping) and isinstance(model.get("primary"), str):
        return model["primary"]
    return None


def _model_entry(config: Mapping[str, Any], ref: str | None) -> Mapping[str, Any]:
    """The entry of `provider/model` in the config, to keep its context window and limits."""
    if not ref or "/" not in ref:
        return {}
    provider, _, model_id = ref.partition("/")
    entries = ((config.get("models") or {}).get("providers") or {}).get(provider) or {}
    for entry in entries.get("models") or []:
        if isinstance(entry, Mapping) and entry.get("id") == model_id:
            return entry
    return {}


def default_model(config: Mapping[str, Any], upstream_model: str | None) -> str:
    """The model id OpenClaw will send: the upstream's when configured, else the one the agent
    already uses (so the proxy forwards the same name), else "metaclaw"."""
    if upstream_model:
        return upstream_model
    primary = _primary(config)
    if primary and "/" in primary:
        return primary.partition("/")[2]
    return DEFAULT_MODEL


def plan_openclaw(
    config: Mapping[str, Any], *, base_url: str, api_key: str, model: str
) -> dict[str, Any]:
    """The config with our provider added and made the default; everything else untouched."""
    new = copy.deepcopy(dict(config))
    previous = _model_entry(config, _primary(config))
    entry = {
        "id": model,
        "name": f"{model} via MetaClaw",
        "reasoning": bool(previous.get("reasoning", False)),
        "input": list(previous.get("input") or ["text"]),
        "cost": {"input": 0, "output": 0, "cacheRead": 0, "cacheWrite": 0},
        "contextWindow": int(previous.get("contextWindow") or 131072),
        "maxTokens": int(previous.get("maxTokens") or 8192),
        "compat": {**(previous.get("compat") or {}), "supportsPromptCacheKey": True},
    }
    models = new.setdefault("models", {})
    if not isinstance(models, dict):
        raise OpenClawConfigError("openclaw.json: `models` is not an object; fix it first")
    providers = models.setdefault("providers", {})
    providers[PROVIDER] = {
        "api": "openai-completions",
        "baseUrl": base_url,
        "apiKey": api_key,
        "models": [entry],
    }
    defaults = new.setdefault("agents", {}).setdefault("defaults", {})
    current = defaults.get("model")
    model_cfg = dict(current) if isinstance(current, Mapping) else {}
    model_cfg["primary"] = f"{PROVIDER}/{model}"
    defaults["model"] = model_cfg
    return new


def _render(config: Mapping[str, Any]) -> str:
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def _masked(config: Mapping[str, Any]) -> Mapping[str, Any]:
    out = copy.deepcopy(dict(config))
    for provider in ((out.get("models") or {}).get("providers") or {}).values():
        if isinstance(provider, dict) and provider.get("apiKey"):
            provider["apiKey"] = MASK
    return out


def _read(path: Path) -> tuple[bytes | None, dict[str, Any]]:
    if not path.exists():
        return None, {}
    raw = path.read_bytes()
    if not raw.strip():
        return raw, {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise OpenClawConfigError(
            f"{path} is not plain JSON ({exc.msg} at line {exc.lineno}; comments or trailing "
            "commas?): remove them, or add the provider with `openclaw config set "
            "models.providers.metaclaw --json '…'`"
        ) from None
    if not isinstance(config, dict):
        raise OpenClawConfigError(f"{path} does not hold a JSON object")
    return raw, config


def _atomic_write(path: Path, data: bytes, mode_from: Path | None = None) -> None:
    """Write via a temp file + rename; the file keeps its permissions (it holds API keys, so a
    new one is private).

    A symlinked config (dotfiles managers link `~/.openclaw/openclaw.json`) stays a symlink: its
    target is replaced. The temp file gets a fresh unpredictable name (`mkstemp`: exclusive, no
    symlink followed) and its final mode before any byte of the key is written to it.
    """
    target = path.resolve() if path.is_symlink() else path
    target.parent.mkdir(parents=True, exist_ok=True)
    source = mode_from if mode_from is not None and mode_from.exists() else target
    mode = source.stat().st_mode & 0o7777 if source.exists() else 0o600
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".metaclaw-tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def connect_openclaw(
    path: Path,
    *,
    base_url: str,
    api_key: str,
    upstream_model: str | None = None,
    model: str | None = None,
    dry_run: bool = False,
) -> ConnectResult:
    """Write the provider entry (idempotent); keep the original for `undo_openclaw`."""
    raw, config = _read(path)
    chosen = model or default_model(config, upstream_model)
    new = plan_openclaw(config, base_url=base_url, api_key=api_key, model=chosen)
    diff = "".join(
        difflib.unified_diff(
            _render(_masked(config)).splitlines(keepends=True) if raw is not None else [],
            _render(_masked(new)).splitlines(keepends=True),
            fromfile=f"{path} (now)",
            tofile=f"{path} (connected)",
        )
    )
    if new == config:
        return ConnectResult(path, False, "", None, chosen)
    if dry_run:
        return ConnectResult(path, True, diff, None, chosen)
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    created = path.with_name(path.name + CREATED_SUFFIX)
    if not backup.exists() and not created.exists():  # the pre-MetaClaw state, kept once
        if raw is None:
            _atomic_write(created, b"")
        else:
            _atomic_write(backup, raw, mode_from=path)
    _atomic_write(path, _render(new).encode())
    return ConnectResult(path, True, diff, backup if backup.exists() else created, chosen)


def undo_openclaw(path: Path) -> str:
    """Restore the bytes from before the first connect; returns what was done."""
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    created = path.with_name(path.name + CREATED_SUFFIX)
    if backup.exists():
        _atomic_write(path, backup.read_bytes(), mode_from=backup)
        backup.unlink()
        return f"restored {path} from {backup.name}"
    if created.exists():
        path.unlink(missing_ok=True)
        created.unlink()
        return f"removed {path} (it did not exist before `metaclaw connect openclaw`)"
    raise OpenClawConfigError(f"nothing to undo: no {backup.name} beside {path}")
