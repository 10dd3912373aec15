"""Keeping web pages out of the local servers (the proxy and the policy server).

A browser will send a cross-site "simple" POST (`text/plain`, forms) to `127.0.0.1` without
asking, and a DNS-rebinding page can make the browser treat `127.0.0.1` as its own origin and
read the replies. Three checks close both doors, before any body is read:

* every request that carries a body must say `Content-Type: application/json` (415 otherwise):
  a page cannot send that cross-site without a CORS preflight, which these servers never grant;
* the `Host` header must name this machine as an address (an IP literal, `localhost`) or a name
  listed in `allowed_hosts` (403): a rebinding page's requests carry the attacker's domain;
* an `Origin` header, when present, must be this very origin (scheme, host and port of the
  request) or one listed in `allowed_origins`, else 403: browsers add it to cross-origin
  requests, other clients never send it.

And a server that binds beyond loopback must have keys, unless explicitly allowed
(`check_bind`). The checks are pure functions; `LocalGuard` is the ASGI middleware both apps
wrap themselves in, each with its own error shape.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str
    code: str


class OpenBindError(ValueError):
    """A server asked to listen beyond loopback with nothing keeping strangers out."""


def _hostname(authority: str) -> str:
    """`host` of `host[:port]` / `[v6]:port`, lower-cased, without a trailing dot."""
    if authority.startswith("["):
        return authority[1 : authority.find("]")].lower() if "]" in authority else ""
    host = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
    return host.lower().rstrip(".")


def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowed(authority: str, allowed_hosts: Iterable[str]) -> bool:
    """An IP literal or a localhost name (a rebinding page can use neither), or a listed name."""
    host = _hostname(authority)
    if not host:
        return False
    if is_loopback(host) or host in {h.lower().rstrip(".") for h in allowed_hosts}:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


def check_request(
    method: str,
    scheme: str,
    headers: dict[bytes, bytes],
    allowed_hosts: Iterable[str],
    allowed_origins: Iterable[str] = (),
) -> Refusal | None:
    """Why this request must be refused before it is read; None when it may proceed."""
    host = headers.get(b"host", b"").decode("latin-1")
    if host and not host_allowed(host, allowed_hosts):
        return Refusal(
            403,
            f"Host {host!r} is not this server: use an IP address or localhost, "
            "or add the name to allowed_hosts (DNS-rebinding protection)",
            "host_not_allowed",
        )
    origin = headers.get(b"origin")
    if origin is not None:
        text = origin.decode("latin-1")
        parts = urlsplit(text)
        same = text != "null" and parts.scheme == scheme and parts.netloc.lower() == host.lower()
        if not same and text.rstrip("/") not in allowed_origins:
            return Refusal(
                403,
                f"cross-origin request from {text!r} refused: browser pages "
                "may not call this server",
                "origin_not_allowed",
            )
    if method in BODY_METHODS:
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        if not _is_json(content_type):
            got = repr(content_type) if content_type else "none"
            return Refusal(
                415,
                f"send the body as JSON with 'Content-Type: application/json' (got {got})",
                "unsupported_media_type",
            )
    return None


def check_bind(host: str, *, keyed: bool, allow_open: bool, section: str, key_setting: str) -> None:
    """Refuse a non-loopback bind with no keys unless `<section>.allow_open_bind` is set."""
    if keyed or allow_open or is_loopback(host):
        return
    raise OpenBindError(
        f"refusing to listen on {host} without {key_setting}: anyone who can reach the port "
        f"could use it. Set {key_setting}, bind 127.0.0.1, or set {section}.allow_open_bind = "
        "true to accept that"
    )


class LocalGuard:
    """ASGI middleware applying `check_request` to every HTTP request."""

    def __init__(
        self,
        app: ASGIApp,
        allowed_hosts: list[str],
        respond: Callable[[Scope, Refusal], Response],
        allowed_origins: list[str] | None = None,
    ) -> None:
        self.app = app
        self.allowed_hosts = frozenset(h.lower().rstrip(".") for h in allowed_hosts)
        self.allowed_origins = frozenset(o.rstrip("/") for o in allowed_origins or [])
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = check_request(
                scope["method"],
                scope.get("scheme", "http"),
                dict(scope["headers"]),
                self.allowed_hosts,
                self.allowed_origins,
            )
            if refusal is not None:
                await self.respond(scope, refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)
