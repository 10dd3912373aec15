"""What the policy server's HTTP side needs from an engine, whichever generates.

Two engines stand behind the same routes: `PolicyEngine` (the embedded model + LoRA, torch on
this machine) and `TinkerEngine` (a Tinker `SamplingClient` on the promoted sampler weights).
The app, the streams and the launcher are written against this protocol so neither engine's
internals leak into them and the HTTP behaviour (shapes, errors, trace) is the same for both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from metaclaw.serving.priority import Priority
from metaclaw.serving.requests import Policy, Request
from metaclaw.serving.sampling import SamplingParams


class Engine(Protocol):
    name: str
    max_new_tokens: int
    max_context_tokens: int
    max_queue: int
    max_batch: int
    stats: Any  # a dataclass of counters, shown as is in /healthz
    # True: a reply arrives whole, so a stream waits for it before answering 200 and a failure
    # is a plain HTTP error (the proxy can then fall back); False: tokens stream as generated
    answers_whole: bool

    def start(self) -> Any: ...

    def close(self) -> None: ...

    @property
    def alive(self) -> bool: ...

    @property
    def policy(self) -> Policy: ...

    @property
    def queued(self) -> int: ...

    def queued_by(self, priority: Priority) -> int: ...

    @property
    def active(self) -> int: ...

    @property
    def paused(self) -> int: ...

    def health(self) -> dict[str, Any]:
        """Engine-specific fields of /healthz (where the weights come from, service state)."""
        ...

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]: ...

    def decode_all(self, ids: list[int]) -> str: ...

    def token_text(self, token_id: int) -> str: ...

    def render_chat(self, messages: Any, tools: list[Any] | None) -> str: ...

    def check_prompt(self, prompt_ids: list[int], max_tokens: int) -> int: ...

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        stream: bool,
        timeout_s: float,
        priority: Priority = Priority.INTERACTIVE,
    ) -> Request: ...

    def locate(
        self, home: Path, checkpoint_id: str | None, recorded: str | None
    ) -> tuple[str | None, Any]:
        """(label, what `swap` loads) for a checkpoint and its recorded path; raises
        `CheckpointError` when this engine cannot serve it."""
        ...

    async def swap(self, checkpoint_id: str | None, target: Any) -> Policy: ...

    def swap_blocking(self, checkpoint_id: str | None, target: Any) -> Policy: ...
