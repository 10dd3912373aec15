"""What passes between the HTTP side and the engine's worker: a request in flight, the events
it receives (`Delta` per token, then `Result` or `EngineError`), and the error shape.

Kept apart from the engine so the app, the response shapes and the parameter parser depend on
these small types rather than on the worker that fills them.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from metaclaw.serving.constrained import Guide
from metaclaw.serving.priority import Priority
from metaclaw.serving.sampling import SamplingParams, TextTracker


class EngineError(Exception):
    """A request the engine cannot serve; `status`/`code` map to an OpenAI-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.kind = kind
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "code": self.code,
                "param": self.param,
            }
        }


def overloaded(queued: int, limit: int, priority: Priority = Priority.INTERACTIVE) -> EngineError:
    cls = "" if priority is Priority.INTERACTIVE else f"{priority.name.lower()} "
    return EngineError(
        503,
        f"policy server overloaded: {queued} {cls}requests already queued "
        f"(policy.max_queue={limit}); retry shortly",
        "overloaded",
        "server_error",
    )


def shutting_down() -> EngineError:
    return EngineError(503, "policy server is shutting down", "unavailable", "server_error")


@dataclass(frozen=True)
class Policy:
    """The weights a request runs on: the base model, plus a LoRA adapter when `adapter` is set."""

    checkpoint_id: str | None = None
    adapter: str | None = None  # the adapter's name inside the peft model
    path: str | None = None


@dataclass
class Result:
    """A finished generation."""

    prompt_ids: list[int]
    completion_ids: list[int]
    completion_logprobs: list[float]
    completion_top: list[list[tuple[int, float]]]
    prompt_logprobs: list[float | None] | None
    prompt_top: list[list[tuple[int, float]]] | None
    text: str
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    checkpoint: str | None
    temperature: float


@dataclass
class Delta:
    """One sampled token, streamed: newly releasable text (may be empty) and the token."""

    text: str
    token_id: int | None  # None: text released at the end, no new token
    logprob: float | None
    top: list[tuple[int, float]]


@dataclass(eq=False)
class Request:
    """One generation in flight; the async side reads `events`, the worker fills it."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    deadline: float
    loop: asyncio.AbstractEventLoop
    priority: Priority = Priority.INTERACTIVE
    events: asyncio.Queue[Delta | Result | EngineError] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    done: bool = False
    policy: Policy | None = None
    generator: torch.Generator | None = None
    tracker: TextTracker | None = None
    guide: Guide | None = None  # response_format: masks and tracks the grammar
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    prompt_logprobs: list[float | None] | None = None
    prompt_top: list[list[tuple[int, float]]] | None = None

    def cancel(self) -> None:
        """Called from the async side (client gone); the worker drops the row next round."""
        self.cancelled = True

    def _send(self, event: Delta | Result | EngineError) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown)
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
