"""The upstream LLM as seen by the proxy: pooled HTTP connections and transport-error mapping."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2
import orjson

from metaclaw.config import UpstreamSettings
from metaclaw.proxy.errors import ProxyError

# Client headers worth passing on; everything else (cookies, our own auth) stays here.
_FORWARDED = ("anthropic-version", "anthropic-beta", "openai-organization", "openai-project")


class Upstream:
    """One pooled client for the OpenAI-compatible upstream and one for an Anthropic one."""

    def __init__(self, settings: UpstreamSettings, *, client_auth_passthrough: bool) -> None:
        self.settings = settings
        self.passthrough = client_auth_passthrough
        limits = httpx2.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
        )
        timeout = httpx2.Timeout(settings.timeout_s, connect=settings.connect_timeout_s)
        # httpx2 (httpx's successor): httpx 0.28's pool bookkeeping cost ~70% of proxy CPU
        # under load (bench/README.md). trust_env off: HTTP_PROXY must not reroute the LLM.
        self.client = httpx2.AsyncClient(limits=limits, timeout=timeout, trust_env=False)

    async def aclose(self) -> None:
        await self.client.aclose()

    @property
    def openai_configured(self) -> bool:
        return bool(self.settings.base_url)

    @property
    def anthropic_native(self) -> bool:
        return bool(self.settings.anthropic_base_url)

    def _openai_headers(self, client_headers: Mapping[str, str]) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.settings.api_key is not None:
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
        self, path: str, body: dict[str, Any], client_headers: Mapping[str, str]
    ) -> httpx2.Response:
        if not self.settings.base_url:
            raise ProxyError(
                503,
                "no upstream LLM is configured: set METACLAW_UPSTREAM__BASE_URL "
                "(or upstream.base_url in metaclaw.toml)",
                type="server_error",
                code="no_upstream",
            )
        url = self.settings.base_url.rstrip("/") + path
        return await self._open(url, body, self._openai_headers(client_headers))

    async def open_anthropic(
        self, body: dict[str, Any], client_headers: Mapping[str, str]
    ) -> httpx2.Response:
        base = (self.settings.anthropic_base_url or "").rstrip("/")
        if not base.endswith("/v1"):
            base += "/v1"
        return await self._open(base + "/messages", body, self._anthropic_headers(client_headers))

    async def _open(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> httpx2.Response:
        """Send and return once headers arrive; the caller reads (or streams) and closes."""
        request = self.client.build_request(
            "POST", url, content=orjson.dumps(body), headers=headers
        )
        try:
            return await self.client.send(request, stream=True)
        except httpx2.TimeoutException as exc:
            raise ProxyError(
                504,
                f"upstream timed out ({type(exc).__name__})",
                "upstream_error",
                "upstream_timeout",
            ) from None
        except httpx2.TransportError as exc:
            raise ProxyError(
                502,
                f"upstream unreachable at {url}: {type(exc).__name__}: {exc}",
                "upstream_error",
                "upstream_unavailable",
            ) from None

    async def get_models(self, client_headers: Mapping[str, str]) -> httpx2.Response:
        url = (self.settings.base_url or "").rstrip("/") + "/models"
        return await self.client.get(url, headers=self._openai_headers(client_headers))
