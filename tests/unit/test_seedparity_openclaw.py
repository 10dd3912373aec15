"""`metaclaw connect openclaw` on a copy of a realistic OpenClaw config: add, idempotent
re-run, dry run, undo byte-for-byte; and `metaclaw connect` for generic clients."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from metaclaw.config import Settings
from metaclaw.connect import (
    OpenClawConfigError,
    connect_openclaw,
    openclaw_config_path,
    proxy_target,
    undo_openclaw,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "openclaw" / "openclaw.json"
BASE = "http://127.0.0.1:30000/v1"


@pytest.fixture()
def oc(tmp_path: Path) -> Path:
    path = tmp_path / "state" / "openclaw.json"
    path.parent.mkdir()
    shutil.copyfile(FIXTURE, path)
    path.chmod(0o600)
    return path


def test_config_path_follows_openclaws_rules(tmp_path: Path) -> None:
    assert openclaw_config_path(
        {"OPENCLAW_CONFIG_PATH": "/x/c.json", "OPENCLAW_STATE_DIR": "/s"}
    ) == Path("/x/c.json")
    assert openclaw_config_path({"OPENCLAW_STATE_DIR": "/s"}) == Path("/s/openclaw.json")
    assert openclaw_config_path({}, home=tmp_path) == tmp_path / ".openclaw" / "openclaw.json"


def test_connect_adds_provider_keeps_the_rest_and_undo_restores_bytes(oc: Path) -> None:
    original = oc.read_bytes()
    before = json.loads(original)
    result = connect_openclaw(oc, base_url=BASE, api_key="pk-secret")
    assert result.changed and result.model == "gpt-5.2"  # the agent's current model id
    cfg = json.loads(oc.read_text())
    provider = cfg["models"]["providers"]["metaclaw"]
    assert provider["api"] == "openai-completions"
    assert provider["baseUrl"] == BASE and provider["apiKey"] == "pk-secret"
    [model] = provider["models"]
    assert model["id"] == "gpt-5.2" and model["compat"]["supportsPromptCacheKey"] is True
    assert model["contextWindow"] == 400000 and model["input"] == ["text", "image"]
    assert cfg["agents"]["defaults"]["model"] == {
        "primary": "metaclaw/gpt-5.2",
        "fallbacks": ["fakellm/fake-model"],
    }
    # everything else untouched
    for name in ("openai", "fakellm"):
        assert cfg["models"]["providers"][name] == before["models"]["providers"][name]
    assert cfg["agents"]["defaults"]["sandbox"] == {"mode": "off"}
    assert cfg["telemetry"] == {"enabled": False}
    assert "pk-secret" not in result.diff and "**********" in result.diff
    assert stat.S_IMODE(oc.stat().st_mode) == 0o600, "a file with keys stays private"
    backup = oc.with_name("openclaw.json.metaclaw-backup")
    assert result.backup == backup and backup.read_bytes() == original

    # idempotent: same bytes, same backup, reported as no change
    connected = oc.read_bytes()
    again = connect_openclaw(oc, base_url=BASE, api_key="pk-secret")
    assert not again.changed and oc.read_bytes() == connected
    assert backup.read_bytes() == original
    # a changed port rewrites the entry but the backup still holds the pre-MetaClaw bytes
    moved = connect_openclaw(oc, base_url="http://127.0.0.1:31000/v1", api_key="pk-secret")
    assert moved.changed and backup.read_bytes() == original

    assert "restored" in undo_openclaw(oc)
    assert oc.read_bytes() == original and not backup.exists()
    with pytest.raises(OpenClawConfigError, match="nothing to undo"):
        undo_openclaw(oc)


def test_dry_run_writes_nothing(oc: Path) -> None:
    original = oc.read_bytes()
    result = connect_openclaw(oc, base_url=BASE, api_key="k", dry_run=True)
    assert result.changed and '+      "metaclaw": {' in result.diff
    assert oc.read_bytes() == original
    assert not oc.with_name("openclaw.json.metaclaw-backup").exists()


def test_missing_file_is_created_and_undo_removes_it(tmp_path: Path) -> None:
    path = tmp_path / "oc" / "openclaw.json"
    result = connect_openclaw(path, base_url=BASE, api_key="k", upstream_model="qwen3")
    cfg = json.loads(path.read_text())
    assert cfg["agents"]["defaults"]["model"]["primary"] == "metaclaw/qwen3"
    assert result.model == "qwen3"
    undo_openclaw(path)
    assert not path.exists() and list(path.parent.iterdir()) == []


def test_json5_config_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "openclaw.json"
    path.write_text('{\n  // my comment\n  "agents": {},\n}\n')
    with pytest.raises(OpenClawConfigError, match="not plain JSON"):
        connect_openclaw(path, base_url=BASE, api_key="k")
    assert path.read_text().startswith("{\n  // my comment")


def test_proxy_target_uses_loopback_and_first_key() -> None:
    t = proxy_target(
        Settings(proxy={"host": "0.0.0.0", "port": 4100, "api_keys": ["pk-first", "pk-second"]})
    )
    assert (t.base_url, t.api_key, t.auth) == ("http://127.0.0.1:4100/v1", "pk-first", True)
    assert t.anthropic_base_url == "http://127.0.0.1:4100" and "pk-first" not in repr(t)
    open_proxy = proxy_target(Settings(proxy={"port": 4101}))
    assert not open_proxy.auth and open_proxy.api_key == "metaclaw-local"


def _cli(args: list[str], env: dict[str, str], tmp: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("METACLAW_", "OPENCLAW_"))}
    return subprocess.run(
        [sys.executable, "-m", "metaclaw", *args],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=60,
        env={**clean, "METACLAW_CONFIG": str(tmp / "none.toml"), "COLUMNS": "200", **env},
    )


def test_connect_cli(oc: Path, tmp_path: Path) -> None:
    original = oc.read_bytes()
    env = {
        "OPENCLAW_CONFIG_PATH": str(oc),
        "METACLAW_PROXY__API_KEYS": "pk-cli-secret",
        "METACLAW_PROXY__PORT": "30123",
    }
    dry = _cli(["connect", "openclaw", "--dry-run"], env, tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "http://127.0.0.1:30123/v1" in dry.stdout and oc.read_bytes() == original
    done = _cli(["connect", "openclaw"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (
        json.loads(oc.read_text())["models"]["providers"]["metaclaw"]["apiKey"] == "pk-cli-secret"
    )
    again = _cli(["connect", "openclaw"], env, tmp_path)
    assert "nothing to do" in again.stdout
    undo = _cli(["connect", "openclaw", "--undo"], env, tmp_path)
    assert undo.returncode == 0 and oc.read_bytes() == original
    generic = _cli(["connect"], env, tmp_path)
    assert generic.returncode == 0, generic.stderr
    assert "OPENAI_BASE_URL=http://127.0.0.1:30123/v1" in generic.stdout
    assert "ANTHROPIC_BASE_URL=http://127.0.0.1:30123" in generic.stdout
    for out in (dry, done, again, undo, generic):
        assert "pk-cli-secret" not in out.stdout + out.stderr
    shown = _cli(["connect", "--show-key"], env, tmp_path)
    assert "OPENAI_API_KEY=pk-cli-secret" in shown.stdout
