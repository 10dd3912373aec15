"""A request routed to our policy server goes to the configured upstream when the policy server
cannot answer it.

Why: with the Tinker engine the policy server depends on a remote service that can be slow,
rate-limited or down; the server then answers an OpenAI-shaped 503 (`tinker_timeout`,
`tinker_unavailable`, `overloaded`), or is not running at all. A user with an upstream configured
should still get a reply. Only 503s fall back (a 4xx is about the request and would fail the
same way upstream), and the turn is recorded as what it is: the upstream's reply carries no
`metaclaw` trace, so `served_by` is `upstream` and no token ids are claimed for the policy.
Without an upstream the 503 reaches the client as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from metaclaw.proxy.capture import TurnDraft
from metaclaw.proxy.errors import ProxyError
from metaclaw.proxy.relay import ProxyState, open_upstream
from metaclaw.proxy.upstream import UpstreamResponse, UpstreamStreamError

log = logging.getLogger("metaclaw.proxy")
UNAVAILABLE = 503

Opener = Callable[[bool], Awaitable[UpstreamResponse]]  # policy? → the opened response


async def open_policy_or_upstream(
    state: ProxyState, draft: TurnDraft, to_policy: bool, opener: Opener
) -> UpstreamResponse:
    """Open the call on the policy server when routed there; on its 503 (or when it is not
    running), on the configured upstream instead."""
    if not (to_policy and state.upstream.configured):
        return await open_upstream(state, draft, lambda: opener(to_policy))
    try:
        resp = await opener(True)
    except ProxyError as err:
        if err.status != UNAVAILABLE:
            return await open_upstream(state, draft, _raising(err))
        reason = err.message
    else:
        if resp.status_code != UNAVAILABLE:
            return resp
        reason = await _drained(resp)
    log.warning("policy server unavailable (%s); serving from the upstream", reason[:300])
    return await open_upstream(state, draft, lambda: opener(False))


async def _drained(resp: UpstreamResponse) -> str:
    """The refused response's body (for the log), its connection released."""
    try:
        return (await resp.aread()).decode("utf-8", "replace")
    except UpstreamStreamError as exc:
        return f"(body unreadable: {exc})"
    finally:
        await resp.aclose()


def _raising(err: ProxyError) -> Callable[[], Awaitable[UpstreamResponse]]:
    async def again() -> UpstreamResponse:
        raise err

    return again
