"""Context distillation from the policy held to the user's rule.

When a user's hint states a shape the reply must have (`scoring/hint_rules.py`: "under 15
words", "one sentence", "end with 'Cheers!'"), the policy server writes the reply the user asked
for: the same prompt the student saw (token ids, as served), sampled by the serving policy under
constrained decoding that enforces the rule, then the rule's suffix. The unhinted learner is
trained on those replies with cross-entropy. The teacher is the policy itself, so its replies stay
in the student's own style and vocabulary; only the rule is new.

Why this teacher on embedded defaults: the 135M model does not follow a hint put in its context
(see hint_teacher.py), so a hinted copy of it has no signal for a behaviour the base never shows,
while the rule-holding copy writes compliant replies by construction. A reply the constraint
did not finish within `max_tokens` (finish_reason "length") is dropped: it is not what the user
asked for.

Requests go to `/v1/completions` with the prompt as token ids (no re-rendering, so positions
line up with the served turn) and are marked background: users are served first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from metaclaw.scoring.hint_rules import HintRule
from metaclaw.serving.priority import BACKGROUND_HEADERS

MAX_PARALLEL = 8  # the policy server batches concurrent requests; more only queue


@dataclass(frozen=True)
class RolloutRequest:
    turn_id: str
    prompt: list[int]
    rule: HintRule


@dataclass(frozen=True)
class Rollout:
    """One reply the rule-holding teacher wrote for a turn's prompt."""

    turn_id: str
    prompt: list[int]
    completion: list[int]  # body, then the rule's suffix, then the end-of-turn token


class HintRolloutClient:
    """Asks an OpenAI-compatible server that supports MetaClaw's regex `response_format` (the
    local policy server) for rule-holding replies."""

    def __init__(
        self,
        base_url: str,
        model: str,
        tokenizer: Any,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        from openai import OpenAI

        self.model = model
        self.tokenizer = tokenizer
        self.client = OpenAI(
            base_url=base_url,
            api_key=api_key or "unused",
            timeout=timeout_s,
            max_retries=2,
            default_headers=BACKGROUND_HEADERS,
        )

    def _one(
        self, req: RolloutRequest, temperature: float, max_tokens: int, seed: int
    ) -> tuple[Rollout | None, str]:
        try:
            resp = self.client.completions.create(
                model=self.model,
                prompt=req.prompt,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
                extra_body={"response_format": {"type": "regex", "regex": req.rule.grammar_regex}},
            )
        except Exception:  # the openai client raises many kinds; counted, not fatal
            return None, "teacher_error"
        choice = resp.choices[0]
        if choice.finish_reason != "stop":
            return None, "teacher_unfinished"
        trace = (resp.model_extra or {}).get("metaclaw") or {}
        body = trace.get("completion_token_ids")
        if not isinstance(body, list) or not all(isinstance(t, int) for t in body):
            return None, "teacher_no_tokens"
        return Rollout(req.turn_id, req.prompt, self._finish(body, req.rule)), ""

    def _finish(self, body: list[int], rule: HintRule) -> list[int]:
        """Body (without its end-of-turn token), the rule's suffix, then end-of-turn."""
        eos = self.tokenizer.eos_token_id
        if body and body[-1] == eos:
            body = body[:-1]
        suffix = (
            list(self.tokenizer(rule.suffix, add_special_tokens=False)["input_ids"])
            if rule.suffix
            else []
        )
        return [*body, *suffix, eos]

    def rollouts(
        self,
        requests: Sequence[RolloutRequest],
        *,
        samples: int,
        temperature: float,
        max_tokens: int,
    ) -> tuple[list[Rollout], Counter[str]]:
        """`samples` replies per request: the first greedy (the policy's most likely reply that
        keeps the rule), the rest at `temperature`, seeded by position so a rerun asks the same.
        The counter says why any were dropped."""
        jobs = [(req, k) for req in requests for k in range(samples)]
        skipped: Counter[str] = Counter()
        if not jobs:
            return [], skipped
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(jobs))) as pool:
            results = list(
                pool.map(
                    lambda job: self._one(
                        job[0], temperature if job[1] else 0.0, max_tokens, job[1]
                    ),
                    jobs,
                )
            )
        out = []
        for rollout, reason in results:
            if rollout is None:
                skipped[reason] += 1
            else:
                out.append(rollout)
        return out, skipped
