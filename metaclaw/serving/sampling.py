"""Pure pieces of generation: sampling one token, and turning token ids into released text.

Kept free of models and I/O so they are tested directly. Two rules matter for training:
the logprob reported for a sampled token is its log-probability under the distribution it was
actually drawn from (softmax(logits / T) within the top_p nucleus; the untempered distribution
for greedy decoding), the same convention as Tinker's sampler and our LocalBackend, because
that is what importance sampling divides by. At T = 1 and top_p = 1 it is exactly what a
training forward pass of the same weights computes. And the end-of-sequence token, when
sampled, is part of the completion's token ids (the policy must learn to stop), but never part
of its text.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from metaclaw.serving.constrained import Constraint, Guide

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"
_TOOL_RE = re.compile(re.escape(TOOL_OPEN) + r"\s*(.*?)\s*" + re.escape(TOOL_CLOSE), re.DOTALL)


@dataclass(frozen=True)
class SamplingParams:
    """What one request asked for, already validated and clamped to the server's limits."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_logprobs: int = 0  # alternatives reported per token (0: only the chosen token)
    prompt_logprobs: bool = False  # score the prompt too (completions echo+logprobs)
    detect_tools: bool = False  # hold back and parse <tool_call> blocks
    ignore_eos: bool = False  # vLLM's extension: generate exactly max_tokens (benchmarks)
    constraint: Constraint | None = None  # response_format: the grammar the reply must match


def choose(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator | None,
    guide: Guide | None = None,
) -> tuple[int, float, list[tuple[int, float]]]:
    """Pick the next token from one row of logits [V].

    Returns (token id, its logprob under the distribution sampled from, top alternatives as
    (id, logprob) from that same distribution). With a `guide` (a constrained request), tokens
    the grammar forbids are masked out first and the chosen token advances the guide.
    """
    if guide is not None:
        logits = guide.mask(logits)
    logprobs = sampling_logprobs(logits, params.temperature, params.top_p)
    if params.temperature <= 0.0:
        token = int(torch.argmax(logprobs))
    else:
        token = int(torch.multinomial(logprobs.exp(), 1, generator=generator))
    if guide is not None:
        guide.advance(token)
    return token, float(logprobs[token]), top_k(logprobs, params.top_logprobs)


def sampling_logprobs(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Log-probabilities of the distribution a token is drawn from: softmax(logits / T),
    restricted to the top_p nucleus and renormalised; greedy (T = 0) reports the untempered
    model distribution. Tokens outside the nucleus get -inf."""
    logits = logits.float()
    if temperature <= 0.0:
        return torch.log_softmax(logits, dim=-1)
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    if top_p >= 1.0:
        return logprobs
    sorted_lp, order = torch.sort(logprobs, descending=True)
    probs = sorted_lp.exp()
    before = torch.cumsum(probs, dim=-1) - probs  # mass strictly above each token
    sorted_lp = sorted_lp.masked_fill(before >= top_p, float("-inf"))
    sorted_lp = sorted_lp - torch.logsumexp(sorted_lp, dim=-1)
    return torch.full_like(logprobs, float("-inf")).scatter(-1, order, sorted_lp)


def top_k(logprobs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The k most likely alternatives (fewer when the nucleus holds fewer)."""
    if k <= 0:
        return []
    values, ids = torch.topk(logprobs, min(k, logprobs.shape[-1]))
    return [(int(i), float(v)) for i, v in zip(ids, values, strict=True) if v > float("-inf")]


@dataclass
class TextTracker:
    """Turns a growing list of token ids into text that is safe to release to a client.

    Text is held back while it could still change or be cut: an incomplete UTF-8 sequence
    (decoded as U+FFFD), a tail that may be the start of a stop string, and, when tools are
    on, everything from the start of a `<tool_call>` tag (tool calls are parsed at the end).
    """

    decode: Callable[[Sequence[int]], str]
    stop: tuple[str, ...] = ()
    detect_tools: bool = False
    ids: list[int] = field(default_factory=list)
    text: str = ""
    released: int = 0
    stopped_by: str | None = None

    def push(self, token_id: int) -> str:
        """Add a generated (non-EOS) token; returns newly releasable text (maybe "")."""
        self.ids.append(token_id)
        self.text = self.decode(self.ids)
        for stop in self.stop:
            at = self.text.find(stop, max(0, self.released - len(stop)))
            if at != -1:
                self.text = self.text[:at]
                self.stopped_by = stop
                return self.flush()
        safe = len(self.text)
        while safe > self.released and self.text[safe - 1] == "\ufffd":
            safe -= 1
        safe = min(safe, len(self.text) - _held_tail(self.text[:safe], self.stop))
        if self.detect_tools:
            at = self.text.find(TOOL_OPEN)
            safe = min(
                safe, at if at != -1 else len(self.text) - _held_tail(self.text, (TOOL_OPEN,))
            )
        return self._release(safe)

    def flush(self) -> str:
        """At the end: release what is left (tool-call blocks stay for `split_tool_calls`)."""
        end = len(self.text)
        if self.detect_tools:
            at = self.text.find(TOOL_OPEN)
            if at != -1 and parse_tool_calls(self.text[at:]):
                end = at
        return self._release(end)

    def _release(self, upto: int) -> str:
        if upto <= self.released:
            return ""
        out = self.text[self.released : upto]
        self.released = upto
        return out


def _held_tail(text: str, stops: tuple[str, ...]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    held = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), held, -1):
            if text.endswith(stop[:n]):
                held = n
                break
    return held


def parse_tool_calls(text: str) -> list[dict[str, Any]]:
    """OpenAI-shaped tool calls from `<tool_call>{"name":…, "arguments":…}</tool_call>` blocks.

    Blocks that are not valid JSON with a string `name` are ignored (left as text).
    """
    calls: list[dict[str, Any]] = []
    for match in _TOOL_RE.finditer(text):
        try:
            obj = json.loads(match.group(1))
        except ValueError:
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
        calls.append(
            {"type": "function", "function": {"name": obj["name"], "arguments": arguments}}
        )
    return calls


def split_tool_calls(text: str) -> tuple[str, list[dict[str, Any]]]:
    """(text without parsed tool-call blocks, tool calls)."""
    calls = parse_tool_calls(text)
    if not calls:
        return text, []
    kept = _TOOL_RE.sub(lambda m: "" if _is_call(m.group(1)) else m.group(0), text)
    return kept.strip(), calls


def _is_call(body: str) -> bool:
    try:
        obj = json.loads(body)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("name"), str)
