"""The upstream LLM as seen by the proxy: pooled HTTP connections and transport-error mapping.

The HTTP client is aiohttp: under load, httpx/httpcore's pool rescans (and polls) every pooled
connection on every request, which cost most of the proxy's CPU (bench/README.md). Only this
module knows the client library; the rest of the proxy sees `UpstreamResponse`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from metaclaw.config import UpstreamSettings
from metaclaw.providers import azure_chat_request
from metaclaw.proxy.errors import ProxyError

# Client headers worth passing on; everything else (cookies, our own auth) stays here.
_FORWARDED = ("anthropic-version", "anthropic-beta", "openai-organization", "openai-project")


@dataclass(frozen=True)
class AzureRoute:
    """An Azure OpenAI deployment as the upstream (metaclaw.providers builds its URL)."""

    endpoint: str
    deployment: str
    api_version: str
    api_key: str

    def __repr__(self) -> str:  # never print the key
        return f"AzureRoute({self.endpoint!r}, {self.deployment!r})"


class UpstreamStreamError(Exception):
    """The upstream connection failed after the response started (drop, read timeout)."""


class UpstreamResponse:
    """An upstream response whose headers have arrived; read it whole or stream it, then close."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status_code = resp.status
        self.headers = resp.headers

    async def aread(self) -> bytes:
        try:
            return await self._resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamStreamError(f"{type(exc).__name__}: {exc}") from None

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise UpstreamStreamError(f"{type(exc).__name__}: {exc}") from None

    async def aclose(self) -> None:
        self._resp.release()


class Upstream:
    """One pooled client for the OpenAI-compatible upstream and one for an Anthropic one."""

    def __init__(
        self,
        settings: UpstreamSettings,
        *,
        client_auth_passthrough: bool,
        local_policy_url: str | None = None,
        local_policy_key: str | None = None,
        azure: AzureRoute | None = None,
    ) -> None:
        """`local_policy_url`: our own policy server — where requests go when no upstream is
        configured (the embedded default) or when routing picks the policy. `azure`: the
        upstream is an Azure OpenAI deployment."""
        self.settings = settings
        self.passthrough = client_auth_passthrough
        self.azure = azure
        self.policy_url = local_policy_url
        self.policy_key = local_policy_key
        self.configured = bool(settings.base_url) or azure is not None
        self.base_url = settings.base_url or (azure.endpoint if azure else None) or local_policy_url
        self.local_default = not self.configured and local_policy_url is not None
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """Created on first use, inside the server's event loop."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_connections),
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=self.settings.connect_timeout_s,
                    sock_read=self.settings.timeout_s,
                ),
                trust_env=False,  # HTTP_PROXY must not silently reroute the LLM traffic
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def openai_configured(self) -> bool:
        return bool(self.base_url)

    @property
    def anthropic_native(self) -> bool:
        return bool(self.settings.anthropic_base_url)

    def _openai_headers(self, client_headers: Mapping[str, str], *, policy: bool) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if policy:
            if self.policy_key:
                headers["authorization"] = f"Bearer {self.policy_key}"
        elif self.settings.api_key is not None:
            headers["authorization"] = f"Bearer {self.settings.api_key.get_secret_value()}"
        elif self.passthrough and "authorization" in client_headers:
            headers["authorization"] = client_headers["authorization"]
        headers.update({k: client_headers[k] for k in _FORWARDED if k in client_headers})
        return headers

    def _anthropic_headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        headers = {
            "content-type": "application/json",
            "anthropic-version": client_headers.get("anthropic-version", "2023-06-01"),
        }
        key = self.settings.anthropic_api_key
        if key is not None:
            headers["x-api-key"] = key.get_secret_value()
        elif self.passthrough:
            for name in ("x-api-key", "authorization"):
                if name in client_headers:
                    headers[name] = client_headers[name]
        headers.update({k: client_headers[k] for k in _FORWARDED if k in client_headers})
        return headers

    async def open_openai(
        self,
        path: str,
        body: dict[str, Any],
        client_headers: Mapping[str, str],
        *,
        policy: bool = False,
    ) -> UpstreamResponse:
        """Send to the configured upstream, or to our policy server when `policy` (or when no
        upstream is configured at all)."""
        policy = policy or self.local_default
        if policy and self.policy_url:
            url = self.policy_url.rstrip("/") + path
            headers = self._openai_headers(client_headers, policy=True)
        elif self.azure is not None and path == "/chat/completions":
            url, headers = azure_chat_request(
                self.azure.endpoint,
                self.azure.deployment,
                self.azure.api_version,
                self.azure.api_key,
            )
            headers.update({k: client_headers[k] for k in _FORWARDED if k in client_headers})
        elif self.settings.base_url:
            url = self.settings.base_url.rstrip("/") + path
            headers = self._openai_headers(client_headers, policy=False)
        else:
            raise ProxyError(
                503,
                "no upstream LLM is configured: set METACLAW_UPSTREAM__BASE_URL "
                "(or upstream.base_url in metaclaw.toml)",
                type="server_error",
                code="no_upstream",
            )
        try:
            return await self._open(url, body, headers)
        except ProxyError as err:
            if policy and err.code == "upstream_unavailable":
                raise ProxyError(
                    503,
                    f"the local policy server ({self.policy_url}) is not running: run "
                    "`metaclaw up` (starts it) or `metaclaw policy-server`"
                    + ("" if self.configured else ", or set METACLAW_UPSTREAM__BASE_URL"),
                    type="server_error",
                    code="no_upstream" if not self.configured else "policy_unavailable",
                ) from None
            raise

    async def open_anthropic(
        self, body: dict[str, Any], client_headers: Mapping[str, str]
    ) -> UpstreamResponse:
        base = (self.settings.anthropic_base_url or "").rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        return await self._open(base + "/messages", body, self._anthropic_headers(client_headers))

    async def _open(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> UpstreamResponse:
        """Send and return once headers arrive; the caller reads (or streams) and closes."""
        try:
            resp = await self.session.post(url, data=orjson.dumps(body), headers=headers)
        except TimeoutError as exc:
            raise ProxyError(
                504,
                f"upstream timed out ({type(exc).__name__})",
                "upstream_error",
                "upstream_timeout",
            ) from None
        except aiohttp.ClientError as exc:
            raise ProxyError(
                502,
                f"upstream unreachable at {url}: {type(exc).__name__}: {exc}",
                "upstream_error",
                "upstream_unavailable",
            ) from None
        return UpstreamResponse(resp)

    async def get_models(self, client_headers: Mapping[str, str]) -> tuple[int, bytes]:
        url = (self.base_url or "").rstrip("/") + "/models"
        headers = self._openai_headers(client_headers, policy=self.local_default)
        async with self.session.get(url, headers=headers) as resp:
            return resp.status, await resp.read()
