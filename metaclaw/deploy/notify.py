"""Tell the running local policy server to hot-swap to the promoted checkpoint.

The ledger is the source of truth; this call only makes a running server act at once. The
server's `POST /admin/adapter` validates the adapter, then swaps between forward passes:
requests already generating finish on the old weights, new ones get the new weights, none
fails. When the server is not running the promotion stands and the server loads it from the
ledger at its next start. A Tinker checkpoint is sent only to a server running the Tinker engine
(`policy.engine`, default the training backend), which switches its sampling client to the
checkpoint's sampler path; the local engine cannot load one, so no call is made then.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import httpx

from metaclaw.config import Settings
from metaclaw.deploy.durable import is_tinker
from metaclaw.endpoints import policy_base_url, policy_engine
from metaclaw.serving.admin_token import HEADER as ADMIN_HEADER
from metaclaw.serving.admin_token import read_admin_token


@dataclass(frozen=True)
class SwapNotice:
    status: str  # swapped | unreachable | refused | skipped
    detail: str
    seconds: float = 0.0


def admin_url(settings: Settings) -> str:
    return policy_base_url(settings).removesuffix("/v1") + "/admin/adapter"


def admin_headers(settings: Settings) -> dict[str, str]:
    """What the policy server's `/admin/*` endpoints require: the API key, if any, and the
    admin token."""
    key = settings.policy.api_key
    headers = {"authorization": f"Bearer {key.get_secret_value()}"} if key else {}
    token = read_admin_token(settings.home)
    if token is not None:  # none yet: no policy server ever ran here, the call is unreachable
        headers[ADMIN_HEADER] = token
    return headers


@dataclass(frozen=True)
class Served:
    """What `GET /admin/adapter` reported; `error` set when it could not say."""

    checkpoint_id: str | None = None
    path: str | None = None
    error: str | None = None
    reachable: bool = True


def served_adapter(settings: Settings) -> Served:
    """Ask the running policy server which adapter new requests get."""
    url = admin_url(settings)
    try:
        resp = httpx.get(
            url,
            headers=admin_headers(settings),
            timeout=settings.deploy.notify_timeout_s,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        return Served(
            error=f"policy server at {url} not reachable ({type(exc).__name__})", reachable=False
        )
    try:
        body = resp.json()
        if resp.status_code == 200:
            return Served(body.get("checkpoint_id"), body.get("path"))
        message = body["error"]["message"]
    except (ValueError, KeyError, TypeError, AttributeError):
        message = resp.text[:300]
    return Served(error=f"GET {url} answered {resp.status_code}: {message}")


def notify_policy_server(
    settings: Settings, checkpoint_id: str | None, path: str | None
) -> SwapNotice:
    """Ask the policy server to serve (checkpoint_id, path); (None, None) = the base model."""
    if is_tinker(path) and policy_engine(settings) != "tinker":
        return SwapNotice(
            "skipped",
            f"{checkpoint_id} lives on Tinker; the policy server runs the local engine "
            "(policy.engine=tinker serves it)",
        )
    url = admin_url(settings)
    started = time.monotonic()
    try:
        resp = httpx.post(
            url,
            json={"checkpoint_id": checkpoint_id, "path": path},
            headers=admin_headers(settings),
            timeout=settings.deploy.notify_timeout_s,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        return SwapNotice(
            "unreachable",
            f"policy server at {url} not reachable "
            f"({type(exc).__name__}); it loads the promoted checkpoint at its "
            "next start",
            time.monotonic() - started,
        )
    elapsed = time.monotonic() - started
    if resp.status_code == 200:
        served = checkpoint_id or "the base model"
        return SwapNotice("swapped", f"policy server now serves {served}", elapsed)
    try:
        message = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = resp.text[:300]
    return SwapNotice(
        "refused", f"policy server refused the swap ({resp.status_code}): {message}", elapsed
    )
