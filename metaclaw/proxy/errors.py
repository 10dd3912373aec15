"""Error shapes: OpenAI-shaped everywhere, Anthropic-shaped on /v1/messages.

The contract: docs/architecture.md, "Proxy rules".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


@dataclass
class ProxyError(Exception):
    """An error the proxy answers itself; `code` is machine-readable, `message` says what to fix."""

    status: int
    message: str
    type: str = "invalid_request_error"
    code: str | None = None
    param: str | None = None

    def __str__(self) -> str:
        return f"{self.status} {self.code or self.type}: {self.message}"


def openai_error_body(err: ProxyError) -> dict[str, Any]:
    return {
        "error": {"message": err.message, "type": err.type, "code": err.code, "param": err.param}
    }


def anthropic_error_body(err: ProxyError) -> dict[str, Any]:
    kind = ANTHROPIC_TYPES.get(err.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": err.message}}


def error_body(err: ProxyError, *, anthropic: bool) -> dict[str, Any]:
    return anthropic_error_body(err) if anthropic else openai_error_body(err)


def is_anthropic_path(path: str) -> bool:
    return path.startswith("/v1/messages")
