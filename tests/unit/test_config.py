"""Configuration: defaults, TOML file, environment precedence, secrets, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from metaclaw.config import Settings


@pytest.fixture()
def toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "metaclaw.toml"
    monkeypatch.setenv("METACLAW_CONFIG", str(path))
    for name in ("METACLAW_HOME", "METACLAW_PROXY__PORT", "METACLAW_UPSTREAM__BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return path


def test_defaults_without_file_or_env(toml: Path) -> None:
    s = Settings()
    assert s.home == Path(".metaclaw")
    assert (s.proxy.host, s.proxy.port) == ("127.0.0.1", 30000)
    assert s.proxy.max_body_bytes == 10 * 1024 * 1024
    assert s.proxy.api_keys == []
    assert s.upstream.base_url is None
    assert s.training.backend == "local"
    assert s.paths.wal == Path(".metaclaw/wal")


def test_env_overrides_file(toml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml.write_text(
        'home = "/data/mc"\n[proxy]\nport = 9000\nhost = "0.0.0.0"\n'
        '[upstream]\nbase_url = "http://file/v1"\n'
    )
    monkeypatch.setenv("METACLAW_PROXY__PORT", "9100")
    monkeypatch.setenv("METACLAW_TRAINING__LORA_RANK", "8")
    s = Settings()
    assert s.home == Path("/data/mc")
    assert s.proxy.port == 9100, "environment beats the file"
    assert s.proxy.host == "0.0.0.0", "the file beats the default"
    assert s.upstream.base_url == "http://file/v1"
    assert s.training.lora_rank == 8


def test_api_keys_from_comma_separated_env(toml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METACLAW_PROXY__API_KEYS", "k1, k2,,")
    keys = Settings().proxy.api_keys
    assert [k.get_secret_value() for k in keys] == ["k1", "k2"]


def test_secrets_never_print(toml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METACLAW_UPSTREAM__API_KEY", "sk-very-secret")
    s = Settings()
    assert "sk-very-secret" not in repr(s) and "sk-very-secret" not in str(s.model_dump())
    assert s.upstream.api_key is not None
    assert s.upstream.api_key.get_secret_value() == "sk-very-secret"


def test_unknown_key_is_an_error_naming_it(toml: Path) -> None:
    toml.write_text("[proxy]\nprot = 9000\n")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "prot" in str(info.value)


def test_wrong_type_is_an_error_naming_it(toml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METACLAW_PROXY__PORT", "not-a-port")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "port" in str(info.value) and "not-a-port" in str(info.value)
