"""The text side every engine shares: one tokenizer behind one lock, the chat renderer, and the
prompt limits.

Why one class both engines build on: the local engine and the Tinker engine must turn a chat
request into exactly the same prompt tokens (the ones the trainer renders, `training/render.py`
goes through the same `chat.render_prompt`), and refuse the same prompts with the same errors.
The lock exists because a fast tokenizer is not safe to call from the event loop's helper
threads and an engine's worker at once.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from metaclaw.serving.requests import EngineError


class TokenizerFace:
    """Encode, decode, render and check prompts for one tokenizer; engines inherit it and set
    `vocab_size`, `max_context_tokens` and `max_new_tokens`."""

    vocab_size: int
    max_context_tokens: int
    max_new_tokens: int

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._tok_lock = threading.Lock()

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        with self._tok_lock:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        with self._tok_lock:
            return str(
                self.tokenizer.decode(
                    list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
            )

    def decode_all(self, ids: list[int]) -> str:
        """Text of token ids with special tokens kept (echoing a prompt given as ids)."""
        with self._tok_lock:
            return str(
                self.tokenizer.decode(
                    ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
                )
            )

    def token_text(self, token_id: int) -> str:
        with self._tok_lock:
            return str(
                self.tokenizer.decode(
                    [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
                )
            )

    def render_chat(self, messages: Any, tools: list[Any] | None) -> str:
        from metaclaw.serving.chat import render_prompt

        with self._tok_lock:
            return render_prompt(self.tokenizer, messages, tools)

    def check_prompt(self, prompt_ids: list[int], max_tokens: int) -> int:
        """Validate a prompt against the limits; returns max_tokens clamped to what fits."""
        if not prompt_ids:
            raise EngineError(400, "the prompt is empty", "empty_prompt")
        bad = next((t for t in prompt_ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise EngineError(
                400,
                f"token id {bad} is outside the vocabulary [0, {self.vocab_size})",
                "invalid_token_id",
            )
        room = self.max_context_tokens - len(prompt_ids)
        if room < 0 or (room == 0 and max_tokens > 0):
            raise EngineError(
                400,
                f"the prompt has {len(prompt_ids)} tokens; this policy server accepts at "
                f"most {self.max_context_tokens} tokens of prompt + completion "
                "(policy.max_context_tokens)",
                "context_length_exceeded",
            )
        return max(0, min(max_tokens, self.max_new_tokens, room))
