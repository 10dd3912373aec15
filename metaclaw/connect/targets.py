"""Where clients should send their requests: the proxy's base URL, key and model name."""

from __future__ import annotations

from dataclasses import dataclass

from metaclaw.config import Settings

NO_AUTH_KEY = "metaclaw-local"  # sent when the proxy has no keys (auth off): SDKs require one


@dataclass(frozen=True)
class ProxyTarget:
    base_url: str  # OpenAI-style, ends with /v1
    api_key: str
    auth: bool  # False: the proxy accepts any key
    model: str | None  # upstream.model when set (the proxy sends it upstream anyway)

    @property
    def anthropic_base_url(self) -> str:
        """The Anthropic SDK appends /v1/messages itself."""
        return self.base_url.removesuffix("/v1")

    def __repr__(self) -> str:  # never print the key
        return f"ProxyTarget(base_url={self.base_url!r}, auth={self.auth}, model={self.model!r})"


def proxy_target(settings: Settings) -> ProxyTarget:
    host = settings.proxy.host
    if host in ("0.0.0.0", "::", ""):  # a wildcard bind is reached on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    keys = settings.proxy.api_keys
    key = keys[0].get_secret_value() if keys else NO_AUTH_KEY
    return ProxyTarget(
        f"http://{host}:{settings.proxy.port}/v1", key, bool(keys), settings.upstream.model
    )
