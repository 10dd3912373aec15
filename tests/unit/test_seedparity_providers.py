"""Provider choice as pure functions: which roles Azure serves, the Azure chat route, and the
Tinker base model picked from a capabilities object."""

from __future__ import annotations

import os

import pytest
from tinker import types

from metaclaw.config import Settings
from metaclaw.providers import (
    TINKER_FALLBACK_MODEL,
    TINKER_PREFERRED_MODEL,
    ProviderConfigError,
    azure_chat_request,
    azure_endpoint,
    choose_tinker_base_model,
)


@pytest.fixture(autouse=True)
def _no_ambient_config(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METACLAW_CONFIG", "/nonexistent/metaclaw.toml")
    for name in list(os.environ):
        if name.startswith(("METACLAW_AZURE", "AZURE_OPENAI", "OPENAI_API_VERSION")):
            monkeypatch.delenv(name)


def caps(*names: str, untrainable: tuple[str, ...] = ()) -> types.GetServerCapabilitiesResponse:
    models = [types.SupportedModel(model_name=n) for n in names]
    models += [types.SupportedModel(model_name=n, trainable=False) for n in untrainable]
    return types.GetServerCapabilitiesResponse(supported_models=models)


def test_tinker_prefers_kimi_when_offered() -> None:
    choice = choose_tinker_base_model(
        caps("Qwen/Qwen3-8B", TINKER_PREFERRED_MODEL, TINKER_FALLBACK_MODEL)
    )
    assert (choice.model, choice.fell_back) == ("moonshotai/Kimi-K2.5", False)


def test_tinker_falls_back_to_qwen3_4b() -> None:
    choice = choose_tinker_base_model(
        caps(TINKER_FALLBACK_MODEL, "Qwen/Qwen3-8B", untrainable=(TINKER_PREFERRED_MODEL,))
    )
    assert (choice.model, choice.fell_back) == ("Qwen/Qwen3-4B-Instruct-2507", True)
    assert "does not offer moonshotai/Kimi-K2.5" in choice.reason


def test_tinker_offering_neither_is_an_error_listing_what_is() -> None:
    with pytest.raises(ProviderConfigError, match=r"offered: Qwen/Qwen3-8B.*BASE_MODEL"):
        choose_tinker_base_model(caps("Qwen/Qwen3-8B"))
    with pytest.raises(ProviderConfigError, match="offered: none"):
        choose_tinker_base_model(types.GetServerCapabilitiesResponse(supported_models=[]))


def test_azure_chat_request_route_and_header() -> None:
    url, headers = azure_chat_request(
        "https://res.openai.azure.com/", "gpt 5.2", "2024-10-21", "az-key"
    )
    assert url == (
        "https://res.openai.azure.com/openai/deployments/gpt%205.2/chat/completions"
        "?api-version=2024-10-21"
    )
    assert headers["api-key"] == "az-key" and "authorization" not in headers


def test_azure_serves_judge_and_critic_unless_they_have_their_own_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert azure_endpoint(Settings(), "judge") is None  # no deployment: not opted in
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com/")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "az-key")
    monkeypatch.setenv("OPENAI_API_VERSION", "2025-01-01-preview")
    s = Settings(
        azure_openai_deployment="gpt-5.2",
        critic={"model": "gpt-5.2-critic"},
        judge={"base_url": "http://own-judge/v1", "model": "j"},
    )
    critic = azure_endpoint(s, "critic")
    assert critic is not None and critic.is_azure
    assert (critic.base_url, critic.model, critic.azure_api_version) == (
        "https://res.openai.azure.com",
        "gpt-5.2-critic",
        "2025-01-01-preview",
    )
    assert "az-key" not in repr(critic)
    assert azure_endpoint(s, "judge") is None, "an explicit judge.base_url wins"
    assert azure_endpoint(s, "upstream") is None, "upstream is opt-in through azure.use_for"
    s2 = Settings(azure_openai_deployment="gpt-5.2", azure={"use_for": ["upstream"]})
    up = azure_endpoint(s2, "upstream")
    assert up is not None and up.model == "gpt-5.2"


def test_incomplete_azure_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProviderConfigError, match="AZURE_OPENAI_ENDPOINT"):
        azure_endpoint(Settings(azure_openai_deployment="d"), "judge")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://res.openai.azure.com")
    with pytest.raises(ProviderConfigError, match="AZURE_OPENAI_API_KEY"):
        azure_endpoint(Settings(azure_openai_deployment="d"), "critic")


def test_explicit_tinker_base_model_is_kept_without_asking() -> None:
    """An explicit `training.base_model` never triggers the capabilities call (no key here)."""
    from metaclaw.training.factory import tinker_base_model

    s = Settings(training={"backend": "tinker"}, model_name="Qwen/Qwen3-8B")
    assert tinker_base_model(s, None) == "Qwen/Qwen3-8B"
