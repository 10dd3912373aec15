"""The one configuration object.

Every default is written here once. Values come, in rising precedence, from these defaults,
the TOML file (`metaclaw.toml` in the working directory or the file named by
`$METACLAW_CONFIG`), and `METACLAW_*` environment variables (`__` separates nesting levels,
e.g. `METACLAW_UPSTREAM__BASE_URL`). Secrets are `SecretStr` so they never print by accident.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

CONFIG_FILE_ENV = "METACLAW_CONFIG"
DEFAULT_CONFIG_FILE = "metaclaw.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UpstreamSettings(_Section):
    """The LLM the proxy forwards to when a request is not served by our own policy."""

    base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1"
    )
    api_key: SecretStr | None = None
    model: str | None = Field(
        default=None, description="Model name sent upstream; overrides the client's model."
    )
    anthropic_base_url: str | None = Field(
        default=None,
        description="Anthropic-compatible base URL for /v1/messages; when unset, Anthropic "
        "requests are translated to the OpenAI-compatible upstream.",
    )
    anthropic_api_key: SecretStr | None = None
    connect_timeout_s: float = 10.0
    timeout_s: float = Field(default=600.0, description="Read timeout for one upstream response.")
    max_connections: int = 512


class ProxySettings(_Section):
    host: str = "127.0.0.1"
    port: int = 30000
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys clients must present; empty disables auth. "
        "Environment form: comma-separated.",
    )
    max_body_bytes: int = 10 * 1024 * 1024
    capture_timeout_s: float = Field(
        default=5.0,
        description="How long a response waits for its turn to be durable before it is sent "
        "anyway (the failure is counted and logged loudly).",
    )
    session_cache_size: int = Field(
        default=100_000, description="Conversations remembered for hash-chain session identity."
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value


class LedgerSettings(_Section):
    wal_rotate_bytes: int = 64 * 1024 * 1024
    wal_rotate_s: float = Field(
        default=5.0, description="An idle non-empty WAL segment is sealed after this long."
    )
    wal_queue_max: int = 100_000
    wal_batch_max: int = 4096
    compact_min_files: int = Field(
        default=8, description="A date partition with at least this many files is compacted."
    )
    compact_grace_s: float = Field(
        default=600.0, description="Replaced Parquet files are deleted after this long."
    )


class JudgeSettings(_Section):
    base_url: str | None = None
    api_key: SecretStr | None = None
    model: str | None = None


class TrainingSettings(_Section):
    backend: Literal["local", "tinker"] = "local"
    base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    lora_rank: int = 32
    batch_size: int = 8
    loss_fn: Literal["cross_entropy", "importance_sampling", "ppo", "cispo", "distillation"] = (
        "importance_sampling"
    )


class FlowSettings(_Section):
    ingest_interval_s: int = 30


class Settings(BaseSettings):
    """MetaClaw's configuration; build it with `Settings()` (reads file + environment)."""

    model_config = SettingsConfigDict(
        env_prefix="METACLAW_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(default=Path(".metaclaw"), description="Data directory.")
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    flows: FlowSettings = Field(default_factory=FlowSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file_path())
        return (init_settings, env_settings, toml)

    @cached_property
    def paths(self) -> LedgerPaths:
        return LedgerPaths(self.home)


class LedgerPaths:
    """Where each part of the data directory lives (one place, so nothing hard-codes a path)."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.wal = self.home / "wal"
        self.ledger = self.home / "ledger"
        self.manifest = self.ledger / "_manifest.json"
        self.lock = self.ledger / ".lock"
        self.prefect = self.home / "prefect"
        self.logs = self.home / "logs"


def config_file_path() -> Path:
    """The TOML file in force: `$METACLAW_CONFIG`, else `./metaclaw.toml` (may not exist)."""
    return Path(os.environ.get(CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE))

