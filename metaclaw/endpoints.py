"""Where each LLM role lives: the local policy server's address and the proxy's upstream.

Why a module of its own: the judge, the critic and `metaclaw up` all need the local policy
server's address, and `metaclaw.serving.defaults` needs the judge's and the critic's endpoint
rules to say what is in force. Keeping the addresses here lets every dependency point one way
(judge/critic → endpoints ← serving.defaults → judge/critic) instead of a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from metaclaw.config import Settings


@dataclass(frozen=True)
class Endpoint:
    """An OpenAI-compatible endpoint for one role, and whether it is the local default."""

    role: str
    base_url: str
    model: str | None
    api_key: SecretStr | None
    local_default: bool


def policy_base_url(settings: Settings) -> str:
    """`http://host:port/v1` of the local policy server (0.0.0.0 binds are reached locally)."""
    host = settings.policy.host
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{settings.policy.port}/v1"


def policy_model(settings: Settings) -> str:
    """The model the local policy server serves."""
    return settings.policy.model or settings.training.base_model


def policy_engine(settings: Settings) -> str:
    """What generates behind the policy server: `policy.engine`, else the training backend's
    kind, so the weights the trainer writes are the ones users get (local LoRA or Tinker)."""
    return settings.policy.engine or settings.training.backend


def local_policy_endpoint(settings: Settings, role: str = "policy") -> Endpoint:
    """The local policy server as an endpoint for `role` (upstream, judge or critic)."""
    return Endpoint(
        role=role,
        base_url=policy_base_url(settings),
        model=policy_model(settings),
        api_key=settings.policy.api_key,
        local_default=True,
    )


def upstream_endpoint(settings: Settings) -> Endpoint:
    """The proxy's upstream: the configured one, else the local policy server."""
    up = settings.upstream
    if up.base_url:
        return Endpoint("upstream", up.base_url.rstrip("/"), up.model, up.api_key, False)
    return local_policy_endpoint(settings, "upstream")
