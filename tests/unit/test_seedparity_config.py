"""MetaClawConfig: friendly keywords, the one precedence rule, unknown keys, provenance,
secrets, `config set` on the TOML file and the snapshot train steps record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import metaclaw
from metaclaw.config import MetaClawConfig, Settings
from metaclaw.config_keys import closest_key, valid_keys
from metaclaw.config_tools import (
    ConfigKeyError,
    config_snapshot,
    describe,
    set_in_toml,
    source_layers,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "metaclaw.toml"
    monkeypatch.setenv("METACLAW_CONFIG", str(path))
    for name in list(os.environ):
        if name.startswith("METACLAW_") and name != "METACLAW_CONFIG":
            monkeypatch.delenv(name)
    for name in ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION"):
        monkeypatch.delenv(name, raising=False)
    return path


def test_metaclawconfig_is_the_one_settings_object(toml: Path) -> None:
    assert metaclaw.MetaClawConfig is Settings is MetaClawConfig
    c = MetaClawConfig(
        use_skills=True, enable_skill_evolution=True, azure_openai_deployment="gpt-5.2"
    )
    assert c.skills.enabled is True and c.flows.evolve_enabled is True
    assert c.azure.deployment == "gpt-5.2" and c.azure.use_for == ["judge", "critic"]


def test_friendly_keywords_map_onto_sections(toml: Path) -> None:
    c = MetaClawConfig(
        use_skills=False,
        enable_skill_evolution=False,
        lora_rank=8,
        batch_size=4,
        loss_fn="ppo",
        model_name="Qwen/Qwen3-4B-Instruct-2507",
    )
    assert c.skills.enabled is False and c.flows.evolve_enabled is False
    assert (c.training.lora_rank, c.training.batch_size, c.training.loss_fn) == (8, 4, "ppo")
    assert c.training.base_model == "Qwen/Qwen3-4B-Instruct-2507"
    assert "base_model" in c.training.model_fields_set  # an explicit choice: no auto-pick
    assert "base_model" not in MetaClawConfig().training.model_fields_set
    with pytest.raises(ValidationError, match="loss_fn"):
        MetaClawConfig(loss_fn="nonsense")


def test_precedence_args_over_env_over_file_over_defaults(
    toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    toml.write_text(
        "[training]\nlora_rank = 4\nbatch_size = 2\nlearning_rate = 0.5\n"
        '[azure]\nendpoint = "https://file.example"\napi_version = "file-v"\n'
    )
    monkeypatch.setenv("METACLAW_TRAINING__LORA_RANK", "16")
    monkeypatch.setenv("METACLAW_TRAINING__BATCH_SIZE", "6")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://std-env.example")
    c = MetaClawConfig(lora_rank=64)
    assert c.training.lora_rank == 64, "a Python argument beats env and file"
    assert c.training.batch_size == 6, "env beats the file"
    assert c.training.learning_rate == 0.5, "the file beats the default"
    assert c.training.lora_alpha == 32, "the default when nobody sets it"
    assert c.azure.endpoint == "https://std-env.example", "standard Azure env beats the file"
    assert c.azure.api_version == "file-v"
    monkeypatch.setenv("METACLAW_AZURE__ENDPOINT", "https://metaclaw-env.example")
    assert MetaClawConfig().azure.endpoint == "https://metaclaw-env.example"
    # nested arguments and friendly ones agree with the same rule
    assert MetaClawConfig(training={"lora_rank": 3}).training.lora_rank == 3


def test_provenance_names_each_source(toml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml.write_text("lora_rank = 4\n[proxy]\nport = 9000\n")  # a friendly key in the file too
    monkeypatch.setenv("METACLAW_PROXY__HOST", "0.0.0.0")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-secret-value")
    layers = dict(source_layers({"batch_size": 5}))
    rows = {r.key: r for r in describe(Settings(batch_size=5), layers)}
    assert (rows["training.batch_size"].value, rows["training.batch_size"].source) == (5, "arg")
    assert (rows["proxy.host"].value, rows["proxy.host"].source) == ("0.0.0.0", "env")
    assert (rows["proxy.port"].value, rows["proxy.port"].source) == (9000, "file")
    assert (rows["training.lora_rank"].value, rows["training.lora_rank"].source) == (4, "file")
    assert rows["azure.api_key"].source == "env:azure"
    assert rows["azure.api_key"].value == "**********"
    assert (rows["ledger.wal_queue_max"].source) == "default"


@pytest.mark.parametrize(
    ("given", "closest"),
    [
        ("lora_rnk", "training.lora_rank"),
        ("proxy.prot", "proxy.port"),
        ("upstream.bas_url", "upstream.base_url"),
        ("traning.batch_size", "training.batch_size"),
        ("batch_size", "training.batch_size"),
    ],
)
def test_closest_key(given: str, closest: str) -> None:
    assert closest_key(given, valid_keys(Settings)) == closest


def test_unknown_keys_are_errors_naming_the_closest(
    toml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match=r"'lora_rnk' \(did you mean 'training.lora_rank'"):
        MetaClawConfig(lora_rnk=8)
    toml.write_text("[proxy]\nprot = 9000\n")
    with pytest.raises(ValidationError, match=r"'proxy.prot' \(did you mean 'proxy.port'"):
        MetaClawConfig()
    toml.write_text("")
    monkeypatch.setenv("METACLAW_UPSTREAM__BASEURL", "http://x")
    with pytest.raises(ValidationError, match=r"did you mean 'upstream.base_url'"):
        MetaClawConfig()


def test_secrets_never_in_errors_or_snapshots(toml: Path) -> None:
    with pytest.raises(ValidationError) as info:
        MetaClawConfig(upstream={"api_key": "sk-top-secret", "modle": "x"})
    assert "sk-top-secret" not in str(info.value)
    assert "did you mean 'upstream.model'" in str(info.value)
    c = MetaClawConfig(
        upstream={"api_key": "sk-top-secret"},
        proxy={"api_keys": ["pk-1"]},
        azure={"api_key": "az-secret"},
    )
    snap = config_snapshot(c)
    text = json.dumps(snap) + json.dumps([r.value for r in describe(c, {})])
    for secret in ("sk-top-secret", "pk-1", "az-secret"):
        assert secret not in text
    assert snap["values"]["training"]["lora_rank"] == 32 and len(snap["sha256"]) == 16
    assert config_snapshot(MetaClawConfig(lora_rank=8))["sha256"] != snap["sha256"]


def test_set_in_toml_keeps_comments_and_validates() -> None:
    text = "# mine\n[training]\nlora_rank = 4  # small\n"
    out, key = set_in_toml(text, "training.lora_rank", "16")
    assert key == "training.lora_rank"
    assert out == "# mine\n[training]\nlora_rank = 16  # small\n"
    out, key = set_in_toml(out, "batch_size", "3")  # a friendly key lands in its section
    assert key == "training.batch_size" and "batch_size = 3" in out
    out, _ = set_in_toml(out, "upstream.model", "123")  # text meant, TOML int given
    assert 'model = "123"' in out
    out, _ = set_in_toml(out, "proxy.api_keys", '["k1", "k2"]')
    assert (
        Settings.model_validate(__import__("tomllib").loads(out))
        .proxy.api_keys[1]
        .get_secret_value()
        == "k2"
    )
    with pytest.raises(ValueError, match=r"training.lora_rank.*integer"):
        set_in_toml(text, "training.lora_rank", "abc")
    with pytest.raises(ConfigKeyError, match=r"did you mean 'training.lora_rank'"):
        set_in_toml(text, "training.lora_rnk", "8")


def _cli(args: list[str], tmp: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("METACLAW_", "AZURE_OPENAI", "OPENAI_API"))
    }
    return subprocess.run(
        [sys.executable, "-m", "metaclaw", *args],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=60,
        env={**clean, "METACLAW_CONFIG": str(tmp / "metaclaw.toml"), "COLUMNS": "200", **env},
    )


def test_config_cli_show_and_set(tmp_path: Path) -> None:
    (tmp_path / "metaclaw.toml").write_text("# keep me\n[training]\nlora_rank = 4\n")
    env = {
        "METACLAW_UPSTREAM__API_KEY": "sk-cli-secret",
        "AZURE_OPENAI_API_KEY": "az-cli",
        "METACLAW_PROXY__PORT": "31000",
    }
    out = _cli(["config", "set", "training.batch_size", "12"], tmp_path, env)
    assert out.returncode == 0, out.stderr
    bad = _cli(["config", "set", "proxy.prot", "1"], tmp_path, env)
    assert bad.returncode == 2 and "did you mean 'proxy.port'" in bad.stderr
    bad = _cli(["config", "set", "proxy.port", "notaport"], tmp_path, env)
    assert bad.returncode == 2 and "proxy.port" in bad.stderr
    secret = _cli(["config", "set", "upstream.api_key", "sk-written"], tmp_path, env)
    assert secret.returncode == 0 and "sk-written" not in secret.stdout + secret.stderr
    text = (tmp_path / "metaclaw.toml").read_text()
    assert text.startswith("# keep me\n") and "batch_size = 12" in text
    shown = _cli(["config", "show", "--json"], tmp_path, env)
    assert shown.returncode == 0, shown.stderr
    rows = json.loads(shown.stdout)
    assert rows["training.batch_size"] == {"value": 12, "source": "file"}
    assert rows["proxy.port"] == {"value": 31000, "source": "env"}
    assert rows["upstream.api_key"] == {"value": "**********", "source": "env"}
    assert rows["skills.top_k"]["source"] == "default"
    table = _cli(["config", "show"], tmp_path, env)
    for secret_value in ("sk-cli-secret", "az-cli", "sk-written"):
        assert secret_value not in shown.stdout + table.stdout + table.stderr
    assert "training.batch_size" in table.stdout
