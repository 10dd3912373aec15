"""Teachers for on-policy distillation: log-probabilities of the student's own tokens.

A teacher scores a full token sequence (prompt + the completion our policy served) and returns
the log-probability of each completion token. Student and teacher must share the tokenizer and
the chat template, or the positions do not line up; the length check in
`losses.distillation_advantages` catches the grossest mismatches.

Three sources, one interface:
- `OpenAICompletionsTeacher`: any OpenAI-compatible `/v1/completions` server that echoes prompt
  logprobs (vLLM, SGLang, llama.cpp server): `prompt` given as token ids, `echo=true`,
  `logprobs=0`, `max_tokens=1`.
- `SamplingClientTeacher`: a Tinker `SamplingClient` (`compute_logprobs`), e.g. a larger model.
- `BackendTeacher`: any `TrainingBackend` (`forward`, no gradient), e.g. a bigger local model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from tinker import types

from metaclaw.training.backend import TrainingBackend, learner_logprobs
from metaclaw.training.datums import completion_span, sft_datum


class TeacherError(RuntimeError):
    """The teacher could not score a sequence (unreachable, or an answer we cannot align)."""


class Teacher(Protocol):
    def completion_logprobs(self, prompt: Sequence[int], completion: Sequence[int]) -> list[float]:
        """log π_teacher(completion[k] | prompt + completion[:k]) for every k."""
        ...


class OpenAICompletionsTeacher:
    """Scores with an OpenAI-compatible completions endpoint (prompt logprobs via `echo`)."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0
    ) -> None:
        from openai import OpenAI

        self.model = model
        self.client = OpenAI(
            base_url=base_url, api_key=api_key or "unused", timeout=timeout_s, max_retries=2
        )

    def completion_logprobs(self, prompt: Sequence[int], completion: Sequence[int]) -> list[float]:
        tokens = [*prompt, *completion]
        try:
            resp = self.client.completions.create(
                model=self.model,
                prompt=tokens,
                max_tokens=1,
                echo=True,
                logprobs=0,
                temperature=1.0,
            )
        except Exception as exc:  # openai raises many kinds; the flow reports one
            raise TeacherError(f"teacher {self.model!r} failed: {exc}") from exc
        logprobs = resp.choices[0].logprobs
        values = list(logprobs.token_logprobs or []) if logprobs is not None else []
        if len(values) < len(tokens):
            raise TeacherError(
                f"teacher {self.model!r} echoed {len(values)} logprobs for {len(tokens)} prompt "
                "tokens; the endpoint must support echo=true with logprobs"
            )
        span = values[len(prompt) : len(tokens)]
        if any(v is None for v in span):
            raise TeacherError(f"teacher {self.model!r} returned null logprobs for completion")
        return [float(v) for v in span]


class SamplingClientTeacher:
    """Scores with a Tinker `SamplingClient` (`compute_logprobs`; element 0 is None)."""

    def __init__(self, sampling_client: Any, timeout_s: float = 120.0) -> None:
        self.client = sampling_client
        self.timeout_s = timeout_s

    def completion_logprobs(self, prompt: Sequence[int], completion: Sequence[int]) -> list[float]:
        from metaclaw.training.tinker_backend import call_with_timeout

        full = types.ModelInput.from_ints([*prompt, *completion])
        values = call_with_timeout(
            lambda: self.client.compute_logprobs(full), self.timeout_s, "compute_logprobs"
        )
        span = list(values)[len(prompt) : len(prompt) + len(completion)]
        if len(span) != len(completion) or any(v is None for v in span):
            raise TeacherError("Tinker teacher returned too few logprobs for the completion")
        return [float(v) for v in span]


class BackendTeacher:
    """Scores with a training backend's current weights (no gradient is touched)."""

    def __init__(self, backend: TrainingBackend) -> None:
        self.backend = backend

    def completion_logprobs(self, prompt: Sequence[int], completion: Sequence[int]) -> list[float]:
        datum = sft_datum(prompt, completion)
        out = self.backend.forward([datum], "cross_entropy")
        return learner_logprobs(out)[0][completion_span(len(prompt), len(completion))]
