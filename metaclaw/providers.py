"""Model providers: one factory for `openai` clients (OpenAI-compatible or Azure OpenAI), the
Azure chat route for the proxy upstream, and the Tinker base-model choice.

Why one place: the judge, the critic and the proxy upstream all talk to "an LLM endpoint"; the
only thing that differs between an OpenAI-compatible server and Azure OpenAI is how the client
is built (resource endpoint + deployment + `api-version` query + `api-key` header), so that
decision is made here once and the callers stay provider-agnostic.

Azure applies to a role (judge | critic | upstream) when `azure.deployment` is set, the role is
in `azure.use_for`, and the role has no `base_url` of its own (an explicit URL always wins).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote, urlencode

from pydantic import SecretStr

log = logging.getLogger("metaclaw.providers")

Role = Literal["judge", "critic", "upstream"]
PLACEHOLDER_KEY = "metaclaw-no-key"  # local servers ignore the key; the SDK requires one

TINKER_PREFERRED_MODEL = "moonshotai/Kimi-K2.5"
TINKER_FALLBACK_MODEL = "Qwen/Qwen3-4B-Instruct-2507"


class ProviderConfigError(ValueError):
    """A provider is selected but incomplete; the message names the variable to set."""


class EndpointLike(Protocol):
    """What the factory needs: the judge's and the critic's endpoint dataclasses fit it.

    Read-only members, so frozen dataclasses fit."""

    @property
    def base_url(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def api_key(self) -> Any: ...  # str | SecretStr | None


@dataclass(frozen=True)
class Endpoint:
    """One LLM endpoint. With `azure_api_version` set it is Azure OpenAI: `base_url` is the
    resource endpoint and `model` the deployment name."""

    base_url: str
    model: str
    api_key: SecretStr | None = None
    azure_api_version: str | None = None

    @property
    def is_azure(self) -> bool:
        return self.azure_api_version is not None

    def __repr__(self) -> str:  # never print the key
        kind = f"azure api-version={self.azure_api_version}" if self.is_azure else "openai"
        return f"Endpoint({kind}, base_url={self.base_url!r}, model={self.model!r})"


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return str(value)


def azure_endpoint(settings: Any, role: Role) -> Endpoint | None:
    """The Azure endpoint serving `role`, or None when Azure does not apply to it."""
    azure = settings.azure
    section = getattr(settings, role)
    if not azure.deployment or role not in azure.use_for or section.base_url:
        return None
    if not azure.endpoint:
        raise ProviderConfigError(
            f"azure.deployment={azure.deployment!r} serves the {role}, but no endpoint is set: "
            "set AZURE_OPENAI_ENDPOINT (or METACLAW_AZURE__ENDPOINT)"
        )
    if azure.api_key is None:
        raise ProviderConfigError(
            f"azure.deployment={azure.deployment!r} serves the {role}, but no key is set: "
            "set AZURE_OPENAI_API_KEY (or METACLAW_AZURE__API_KEY)"
        )
    model = getattr(section, "model", None) or azure.deployment
    return Endpoint(azure.endpoint.rstrip("/"), model, azure.api_key, azure.api_version)


def _client_kwargs(endpoint: EndpointLike, timeout: float, max_retries: int) -> dict[str, Any]:
    key = _secret(endpoint.api_key) or PLACEHOLDER_KEY
    version = getattr(endpoint, "azure_api_version", None)
    common: dict[str, Any] = {"api_key": key, "timeout": timeout, "max_retries": max_retries}
    if version is None:
        return {"base_url": endpoint.base_url, **common}
    return {
        "azure_endpoint": endpoint.base_url,
        "azure_deployment": endpoint.model,
        "api_version": version,
        **common,
    }


def openai_client(endpoint: EndpointLike, *, timeout: float = 60.0, max_retries: int = 0) -> Any:
    """`openai.OpenAI`, or `openai.AzureOpenAI` when the endpoint is Azure."""
    import openai

    kwargs = _client_kwargs(endpoint, timeout, max_retries)
    return openai.AzureOpenAI(**kwargs) if "azure_endpoint" in kwargs else openai.OpenAI(**kwargs)


def async_openai_client(
    endpoint: EndpointLike, *, timeout: float = 60.0, max_retries: int = 0
) -> Any:
    """`openai.AsyncOpenAI`, or `openai.AsyncAzureOpenAI` when the endpoint is Azure."""
    import openai

    kwargs = _client_kwargs(endpoint, timeout, max_retries)
    if "azure_endpoint" in kwargs:
        return openai.AsyncAzureOpenAI(**kwargs)
    return openai.AsyncOpenAI(**kwargs)


def azure_chat_request(
    endpoint: str, deployment: str, api_version: str, api_key: str
) -> tuple[str, dict[str, str]]:
    """(url, headers) of Azure's chat route, for the proxy's raw httpx upstream call:
    `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…` with the key
    in an `api-key` header (Azure ignores `Authorization: Bearer` for key auth)."""
    url = (
        f"{endpoint.rstrip('/')}/openai/deployments/{quote(deployment, safe='')}"
        f"/chat/completions?{urlencode({'api-version': api_version})}"
    )
    return url, {"api-key": api_key, "content-type": "application/json"}


# ---- Tinker base model ---------------------------------------------------------------------


@dataclass(frozen=True)
class ModelChoice:
    model: str
    fell_back: bool
    reason: str


def _offered(capabilities: Any) -> list[str]:
    """Trainable model names of a `GetServerCapabilitiesResponse` (or anything shaped so)."""
    models: Iterable[Any] = getattr(capabilities, "supported_models", None) or []
    names = []
    for m in models:
        name = getattr(m, "model_name", None)
        if name and getattr(m, "trainable", None) is not False:
            names.append(name)
    return names


def choose_tinker_base_model(
    capabilities: Any,
    preferred: str = TINKER_PREFERRED_MODEL,
    fallback: str = TINKER_FALLBACK_MODEL,
) -> ModelChoice:
    """Kimi-K2.5 when the service offers it for training, else the lightweight Qwen3-4B.

    Asked of the service (its capabilities) rather than hard-coded, because Tinker's lineup
    changes and models get deprecated. Neither offered → an error listing what is.
    """
    offered = _offered(capabilities)
    if preferred in offered:
        return ModelChoice(preferred, False, f"Tinker offers {preferred}")
    if fallback in offered:
        return ModelChoice(
            fallback,
            True,
            f"Tinker does not offer {preferred} for training; falling back to {fallback}",
        )
    shown = ", ".join(sorted(offered)[:20]) or "none"
    raise ProviderConfigError(
        f"Tinker offers neither {preferred} nor {fallback} for training (offered: {shown}); "
        "set METACLAW_TRAINING__BASE_MODEL to one of them"
    )
