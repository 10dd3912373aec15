"""Which requests our own policy serves, and which the upstream LLM (pure).

A share is decided per *session* (a stable hash of its id), not per request, so one
conversation never hops between two models mid-way; a model name routes explicitly.
"""

from __future__ import annotations

import hashlib


def session_fraction(session_id: str) -> float:
    """A stable number in [0, 1) for a session id."""
    digest = hashlib.blake2b(session_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def serve_with_policy(
    model: str | None,
    session_id: str,
    *,
    upstream_configured: bool,
    policy_models: list[str],
    policy_share: float,
) -> bool:
    if not upstream_configured:
        return True  # the embedded default: our policy is the only model there is
    if model is not None and model in policy_models:
        return True
    return policy_share > 0 and session_fraction(session_id) < policy_share
