"""Request validation: reject what the upstream would reject, with a reason a person can act on.

Only the fields the proxy itself relies on are checked; everything else is forwarded untouched
so new upstream parameters keep working.
"""

from __future__ import annotations

from typing import Any

import orjson

from metaclaw.proxy.errors import ProxyError

OPENAI_ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
ANTHROPIC_ROLES = {"user", "assistant"}


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> ProxyError:
    return ProxyError(400, message, code=code, param=param)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        raise _bad("request body is empty; send a JSON object", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise _bad(
            f"request body must be a JSON object, got {type(body).__name__}", code="invalid_json"
        )
    return body


def _check_types(body: dict[str, Any], *, model_required: bool) -> None:
    model = body.get("model")
    if model is None and model_required:
        raise _bad("'model' is required", "model", "missing_required_parameter")
    if model is not None and not isinstance(model, str):
        raise _bad(f"'model' must be a string, got {type(model).__name__}", "model", "invalid_type")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream", "invalid_type")
    for name in ("max_tokens", "max_completion_tokens", "n"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise _bad(f"'{name}' must be an integer", name, "invalid_type")
    temperature = body.get("temperature")
    if temperature is not None and (
        not isinstance(temperature, int | float) or isinstance(temperature, bool)
    ):
        raise _bad("'temperature' must be a number", "temperature", "invalid_type")


def _check_messages(messages: Any, roles: set[str]) -> None:
    if messages is None:
        raise _bad("'messages' is required", "messages", "missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty array", "messages", "invalid_type")
    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise _bad(f"{param} must be an object", param, "invalid_type")
        role = msg.get("role")
        if role not in roles:
            raise _bad(
                f"{param}.role must be one of {sorted(roles)}, got {role!r}", f"{param}.role"
            )
        content = msg.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(f"{param}.content must be a string or an array of parts", f"{param}.content")


def validate_chat(body: dict[str, Any], *, model_required: bool) -> None:
    """OpenAI Chat Completions request."""
    _check_types(body, model_required=model_required)
    _check_messages(body.get("messages"), OPENAI_ROLES)


def validate_messages(body: dict[str, Any], *, model_required: bool) -> None:
    """Anthropic Messages request."""
    _check_types(body, model_required=model_required)
    _check_messages(body.get("messages"), ANTHROPIC_ROLES)
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise _bad("'system' must be a string or an array of text blocks", "system")
