"""The pairwise judge: which of two replies to the same conversation is better.

The judge is `deploy.judge_base_url`/`deploy.judge_model` when set — a separate gate judge, so a
policy trained to please the scoring judge cannot pass the gate by the same trick — else the one
configured for scoring (`metaclaw.scoring.judge.judge_endpoint`: any OpenAI-compatible model),
asked a different question: not "was this turn good?" but "which of
these two replies is better?". Each pair is asked twice, with the replies swapped (see
`stats.pair_score`). The reply sections are fenced by fixed markers so neither reply can
impersonate the other's section, and the verdict is the last `Winner:` line.

Bump `PROMPT_VERSION` when the text changes; it is recorded with every evaluation.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import openai

from metaclaw.config import Settings
from metaclaw.deploy.stats import Verdict
from metaclaw.scoring.hint_rules import HintRule
from metaclaw.serving.priority import BACKGROUND_HEADERS

PROMPT_VERSION = "pw1"
MAX_MESSAGE_CHARS = 2000
MAX_REPLY_CHARS = 4000
CONTEXT_MESSAGES = 8
A_BEGIN, A_END = "<<<REPLY A>>>", "<<<END OF REPLY A>>>"
B_BEGIN, B_END = "<<<REPLY B>>>", "<<<END OF REPLY B>>>"
PLACEHOLDER_KEY = "metaclaw-no-key"

RUBRIC = """\
You compare two candidate assistant replies to the same conversation. Decide which reply \
better serves the user: correct, helpful, follows the instructions, uses tools sensibly, and is \
no longer than it needs to be. Do not prefer a reply for its position or its length alone. If \
they are equally good (or equally bad), say tie.

Think briefly if you need to, then end your answer with exactly one line:
Winner: A
or
Winner: B
or
Winner: tie"""

_WINNER = re.compile(r"winner\s*[:=]\s*\**\s*(a|b|tie)\b", re.IGNORECASE)


def _cut(text: str, limit: int) -> str:
    text = (text or "").strip()
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text) - limit} characters cut]"


def _content(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return json.dumps(content)


def _defang(text: str) -> str:
    """A reply must not contain our section markers."""
    return text.replace("<<<", "‹‹‹").replace(">>>", "›››")


def render_conversation(messages: Sequence[dict[str, Any]]) -> str:
    lines = []
    shown = list(messages)[-CONTEXT_MESSAGES:]
    if len(messages) > len(shown):
        lines.append(f"[{len(messages) - len(shown)} earlier messages omitted]")
    for m in shown:
        text = _content(m.get("content"))
        calls = m.get("tool_calls") or []
        parts = [_cut(text, MAX_MESSAGE_CHARS)] if text.strip() else []
        for call in calls:
            fn = (call.get("function") or {}) if isinstance(call, dict) else {}
            parts.append(f"→ calls {fn.get('name')}({_cut(str(fn.get('arguments')), 300)})")
        lines.append(f"[{m.get('role')}] " + ("\n".join(parts) if parts else "(empty)"))
    return _defang("\n".join(lines))


def build_messages(conversation: str, reply_a: str, reply_b: str) -> list[dict[str, str]]:
    user = (
        f"## Conversation\n{conversation}\n\n"
        f"## Candidate replies\n{A_BEGIN}\n{_defang(_cut(reply_a, MAX_REPLY_CHARS))}\n{A_END}\n"
        f"\n{B_BEGIN}\n{_defang(_cut(reply_b, MAX_REPLY_CHARS))}\n{B_END}\n\n"
        "Which reply is better? End with the Winner line."
    )
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}]


def parse_verdict(text: str | None) -> Verdict | None:
    """The last `Winner: A|B|tie` line (or a JSON {"winner": ...}); None when there is none."""
    if not text:
        return None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            value = None
        if isinstance(value, dict) and isinstance(value.get("winner"), str):
            text = f"Winner: {value['winner']}"
    found = _WINNER.findall(text)
    if not found:
        return None
    word = found[-1].lower()
    return "tie" if word == "tie" else ("A" if word == "a" else "B")


class PairDecider(Protocol):
    """Decides a pair without the judge, or returns None (`reward_pairs.RewardModelPairs`)."""

    @property
    def version(self) -> str: ...

    def __call__(
        self, messages: Sequence[dict[str, Any]], candidate: str, current: str
    ) -> tuple[Verdict, Verdict] | None: ...


class JudgeUnavailableError(RuntimeError):
    """The judge could not be reached or refused us; the evaluation is retried later."""


@dataclass
class JudgeStats:
    calls: int = 0
    invalid: int = 0
    rule_decided: int = 0  # pairs the stated rule decided without a call
    model_decided: int = 0  # pairs the reward model decided without a call
    errors: list[str] = field(default_factory=list)


class PairwiseJudge:
    """Asks an OpenAI-compatible judge for pairwise verdicts (bounded concurrency, SDK retries).

    `rule`: the rule users keep stating (`deploy.stated_rules`), checked first: a pair where
    exactly one reply keeps it is decided by it, both orders agreeing, with no call.
    `decider`: the reward model (`deploy.reward_model_pairs`, `reward_pairs.py`), checked next:
    a pair it is sure of is decided by it, both orders agreeing, with no call.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None,
        *,
        temperature: float,
        max_tokens: int,
        concurrency: int,
        timeout_s: float,
        retries: int,
    ) -> None:
        self.model = model
        self.base_url = base_url
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.stats = JudgeStats()
        self.rule: HintRule | None = None
        self.decider: PairDecider | None = None
        self._client_kw = {
            "base_url": base_url,
            "api_key": api_key or PLACEHOLDER_KEY,
            "timeout": timeout_s,
            "max_retries": retries,
            "default_headers": BACKGROUND_HEADERS,  # users first on a shared policy server
        }
        self._concurrency = concurrency
        # made inside the event loop that uses them (each evaluation runs its own loop)
        self._client: openai.AsyncOpenAI | None = None
        self._slots: asyncio.Semaphore | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> PairwiseJudge | None:
        """The gate judge (`deploy.judge_*`), else the scoring judge; None when neither is
        configured."""
        from metaclaw.scoring.judge import judge_endpoint

        judge, deploy = settings.judge, settings.deploy
        if deploy.judge_base_url:
            if not deploy.judge_model:
                raise ValueError(
                    "deploy.judge_model is required when deploy.judge_base_url is "
                    "set (METACLAW_DEPLOY__JUDGE_MODEL)"
                )
            base_url, model, secret = (
                deploy.judge_base_url.rstrip("/"),
                deploy.judge_model,
                deploy.judge_api_key,
            )
        else:
            endpoint = judge_endpoint(settings)
            if endpoint is None:
                return None
            base_url, model, secret = endpoint.base_url, endpoint.model, endpoint.api_key
        key = secret.get_secret_value() if secret else None
        return cls(
            base_url,
            model,
            key,
            temperature=deploy.judge_temperature,
            max_tokens=deploy.judge_max_tokens,
            concurrency=judge.concurrency,
            timeout_s=judge.timeout_s,
            retries=judge.retries,
        )

    async def verdict(self, conversation: str, reply_a: str, reply_b: str) -> Verdict | None:
        messages = build_messages(conversation, reply_a, reply_b)
        if self._client is None or self._slots is None:
            self._client = openai.AsyncOpenAI(**self._client_kw)  # type: ignore[arg-type]
            self._slots = asyncio.Semaphore(self._concurrency)
        async with self._slots:
            self.stats.calls += 1
            try:
                resp = await self._client.chat.completions.create(
                    model=self.model,
                    messages=messages,  # type: ignore[arg-type]
                    temperature=self.temperature,
                    max_tokens=self.max_tokens,
                )
            except openai.APIError as exc:
                self.stats.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                raise JudgeUnavailableError(
                    f"the judge at {self.base_url} (model {self.model}) failed: "
                    f"{type(exc).__name__}: {str(exc)[:200]}"
                ) from None
        text = resp.choices[0].message.content if resp.choices else None
        verdict = parse_verdict(text)
        if verdict is None:
            self.stats.invalid += 1
        return verdict

    async def both_orders(
        self,
        conversation: str,
        candidate: str,
        current: str,
        messages: Sequence[dict[str, Any]] = (),
    ) -> tuple[Verdict | None, Verdict | None]:
        """(verdict with the candidate as A, verdict with the candidate as B). `messages`: the
        prompt `conversation` was rendered from (what the `decider` reads)."""
        if self.rule is not None:
            kept = self.rule.holds(candidate)
            if kept != self.rule.holds(current):
                self.stats.rule_decided += 1
                return ("A", "B") if kept else ("B", "A")
        if self.decider is not None:
            decided = self.decider(messages, candidate, current)
            if decided is not None:
                self.stats.model_decided += 1
                return decided
        first, second = await asyncio.gather(
            self.verdict(conversation, candidate, current),
            self.verdict(conversation, current, candidate),
        )
        return first, second

    async def close(self) -> None:
        """Release the HTTP client (call inside the loop that used it)."""
        client, self._client, self._slots = self._client, None, None
        if client is not None:
            await client.close()
