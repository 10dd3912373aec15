"""The LLM judge (process reward model): m independent votes per turn, through the `openai` client.

Why this shape: judge calls are the only costly, slow and flaky part of scoring, so they get
everything a remote call needs — bounded concurrency (a semaphore over calls), a per-call
timeout, retries with exponential backoff for transient failures (timeouts, connection errors,
429, 5xx), and a cost budget counted in calls (retries included). A turn whose votes could not
all be *obtained* gets no verdict: nothing is written and it is tried again next run. Votes that
came back unreadable are ordinary invalid votes (see `votes.py`). With `judge.structured_output`
the vote is asked for as JSON under a response_format schema (`VOTE_SCHEMA`): same score and
reason, so the scorer version is unchanged; the local policy server enforces the schema.

`judge_endpoint(settings)` is the one place that decides which judge runs; the embedded-model
work points the default at the local policy server there.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import openai
import orjson
from pydantic import SecretStr

from metaclaw.config import JudgeSettings, Settings
from metaclaw.costs.calls import call_row
from metaclaw.costs.usage import Usage, of_response
from metaclaw.ledger.records import Row
from metaclaw.providers import async_openai_client, azure_endpoint
from metaclaw.scoring.prompt import PROMPT_VERSION, JudgeCase
from metaclaw.scoring.votes import MAX_REASON_CHARS, Verdict, Vote, majority, parse_vote
from metaclaw.serving.constrained import response_format
from metaclaw.serving.priority import BACKGROUND_HEADERS

log = logging.getLogger("metaclaw.scoring")

PLACEHOLDER_KEY = "metaclaw-no-key"  # local judges ignore the key, the client requires one

# The vote as JSON (`judge.structured_output`): what `parse_vote` reads, reason first so a judge
# that reasons writes its reason before committing to a score. Not OpenAI-`strict` (it rejects
# maxLength); the local policy server enforces every keyword by constrained decoding, which is
# what makes even the embedded 135M model's votes readable.
VOTE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "maxLength": MAX_REASON_CHARS},
        "score": {"type": "integer", "enum": [1, 0, -1]},
    },
    "required": ["reason", "score"],
    "additionalProperties": False,
}
VOTE_FORMAT = response_format(VOTE_SCHEMA, "judge_vote")


@dataclass(frozen=True)
class JudgeEndpoint:
    base_url: str
    model: str
    api_key: SecretStr | None = None
    azure_api_version: str | None = None  # set: Azure OpenAI (base_url = resource endpoint)
    local: bool = False  # the local policy server: its calls cost nothing

    def __repr__(self) -> str:  # never print the key
        return f"JudgeEndpoint(base_url={self.base_url!r}, model={self.model!r})"


def judge_endpoint(settings: Settings) -> JudgeEndpoint | None:
    from metaclaw.endpoints import local_policy_endpoint, policy_model

    """Which judge to call, or None for "no LLM judge" (implicit + explicit signals only).

    - `judge.base_url` set: that server, with `judge.model` (required) and `judge.api_key`;
    - only `judge.model` set: the upstream's base URL and key, with the judge's model;
    - neither: the local policy server (the embedded model) when `judge.local_default`,
      else None.
    """
    azure = azure_endpoint(settings, "judge")  # Azure OpenAI deployment (metaclaw/providers.py)
    if azure is not None:
        return JudgeEndpoint(azure.base_url, azure.model, azure.api_key, azure.azure_api_version)
    judge = settings.judge
    if judge.base_url:
        if not judge.model:
            raise ValueError(
                "judge.model is required when judge.base_url is set (METACLAW_JUDGE__MODEL)"
            )
        return JudgeEndpoint(judge.base_url.rstrip("/"), judge.model, judge.api_key)
    if judge.model:
        upstream = settings.upstream
        if not upstream.base_url:
            raise ValueError(
                "judge.model is set without judge.base_url, and there is no "
                "upstream.base_url to reuse; set METACLAW_JUDGE__BASE_URL"
            )
        return JudgeEndpoint(
            upstream.base_url.rstrip("/"), judge.model, judge.api_key or upstream.api_key
        )
    if judge.local_default:
        local = local_policy_endpoint(settings)
        return JudgeEndpoint(local.base_url, policy_model(settings), local.api_key, local=True)
    return None


def scorer_version(endpoint: JudgeEndpoint, settings: JudgeSettings) -> str:
    """What a judge score depends on: model, prompt version, votes (and an optional tag)."""
    version = f"judge/{endpoint.model}/{PROMPT_VERSION}/m{settings.votes}"
    return f"{version}/{settings.version_tag}" if settings.version_tag else version


class CallBudget:
    """Judge calls left in this run. A turn reserves its m first attempts before it starts, so a
    run never stops half-way through a panel; retries draw from what is left."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.reserved = 0

    @property
    def left(self) -> int:
        return self.limit - self.used - self.reserved

    def reserve(self, n: int) -> bool:
        if self.left < n:
            return False
        self.reserved += n
        return True

    def spend_reserved(self) -> None:
        self.reserved -= 1
        self.used += 1

    def take(self) -> bool:
        if self.left < 1:
            return False
        self.used += 1
        return True


class JudgeCallError(Exception):
    """A vote could not be obtained (after retries): the turn gets no verdict this run."""


class JudgeConfigError(JudgeCallError):
    """The judge refuses us (bad key, unknown model): no point calling it again this run."""


@dataclass
class JudgeOutcome:
    case: JudgeCase
    votes: list[Vote] = field(default_factory=list)
    verdict: Verdict | None = None
    error: str | None = None  # why there is no verdict
    skipped: bool = False  # not attempted (budget spent, or the judge is misconfigured)


@dataclass
class JudgeStats:
    calls: int = 0  # HTTP calls made (attempts, retries included)
    retries: int = 0
    failed_calls: int = 0
    invalid_votes: int = 0
    seconds: float = 0.0


_RETRYABLE = (
    openai.APITimeoutError,
    openai.APIConnectionError,
    openai.RateLimitError,
    openai.InternalServerError,
)
_FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)


class Judge:
    """Votes on `JudgeCase`s. Use inside one event loop: `async with Judge(...) as judge:`."""

    def __init__(
        self,
        endpoint: JudgeEndpoint,
        settings: JudgeSettings,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self.version = scorer_version(endpoint, settings)
        self.stats = JudgeStats()
        self.call_rows: list[Row] = []  # `model_calls`: one per answered call, for the ledger
        self.broken: str | None = None
        self._owns_client = client is None
        self._client = client or async_openai_client(  # OpenAI-compatible or Azure OpenAI
            endpoint,
            timeout=settings.timeout_s,
            max_retries=0,  # retries are ours: counted against the budget, with our backoff
        )
        self._slots = asyncio.Semaphore(settings.concurrency)

    async def __aenter__(self) -> Judge:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._owns_client:
            await self._client.close()

    # -- one call -------------------------------------------------------------------------
    async def _call(self, case: JudgeCase) -> str:
        async with self._slots:
            if self.broken is not None:  # queued behind a call that found the judge refusing
                raise JudgeConfigError(self.broken)
            self.stats.calls += 1
            # The raw response skips building the SDK's pydantic objects: a third of the
            # client's CPU per call, which is what caps throughput on a small machine.
            # A plain JSON body: the SDK's TypedDict overloads cannot be matched from
            # role/content dicts and an optional response_format.
            request: dict[str, Any] = {
                "model": self.endpoint.model,
                "messages": list(case.messages),
                "temperature": self.settings.temperature,
                "max_tokens": self.settings.max_tokens,
            }
            if self.settings.structured_output:
                request["response_format"] = VOTE_FORMAT
            raw = await self._client.chat.completions.with_raw_response.create(
                **request,
                extra_headers=BACKGROUND_HEADERS,  # users first on a shared policy server
            )
        text, usage = parse_reply(raw.http_response.content)
        self.call_rows.append(
            call_row("judge", self.endpoint.model, case.turn_id, usage, local=self.endpoint.local)
        )
        return text

    async def vote(self, case: JudgeCase, budget: CallBudget) -> Vote:
        """One vote: the first attempt is pre-reserved; retries draw on the budget."""
        budget.spend_reserved()
        attempt = 0
        while True:
            try:
                text = await self._call(case)
            except _FATAL as exc:
                self.stats.failed_calls += 1
                reason = f"judge refused the request: {type(exc).__name__}: {_short(exc)}"
                if self.broken is None:
                    self.broken = reason
                    log.error(
                        "judge at %s (model %s): %s; no more judge calls this run",
                        self.endpoint.base_url,
                        self.endpoint.model,
                        reason,
                    )
                raise JudgeConfigError(reason) from None
            except (*_RETRYABLE, openai.APIStatusError) as exc:
                self.stats.failed_calls += 1
                retryable = isinstance(exc, _RETRYABLE) or (
                    isinstance(exc, openai.APIStatusError) and exc.status_code >= 500
                )
                if not retryable or attempt >= self.settings.retries or not budget.take():
                    why = "budget spent" if retryable and attempt < self.settings.retries else ""
                    raise JudgeCallError(
                        f"{type(exc).__name__}: {_short(exc)}" + (f" ({why})" if why else "")
                    ) from None
                self.stats.retries += 1
                await asyncio.sleep(self._backoff(attempt, exc))
                attempt += 1
                continue
            except openai.OpenAIError as exc:  # anything else the SDK raises: not retried
                self.stats.failed_calls += 1
                raise JudgeCallError(f"{type(exc).__name__}: {_short(exc)}") from None
            vote = parse_vote(text)
            if not vote.valid:
                self.stats.invalid_votes += 1
            return vote

    def _backoff(self, attempt: int, exc: Exception) -> float:
        """Exponential with jitter, never shorter than the server's Retry-After (a busy policy
        server says when to come back), never longer than `judge.retry_max_backoff_s`."""
        delay = self.settings.retry_backoff_s * (2**attempt) * (0.5 + random.random())
        return min(max(delay, _retry_after(exc)), self.settings.retry_max_backoff_s)

    # -- one turn, many turns -------------------------------------------------------------
    async def judge(
        self,
        case: JudgeCase,
        budget: CallBudget,
        votes: int | None = None,
        earlier: Sequence[Vote] = (),
    ) -> JudgeOutcome:
        """Cast `votes` (default `judge.votes`) new votes; the verdict is the majority of
        those and the `earlier` ones (a panel completed in a second round)."""
        m = self.settings.votes if votes is None else votes
        if self.broken is not None:
            return JudgeOutcome(case, list(earlier), error=self.broken, skipped=True)
        if not budget.reserve(m):
            return JudgeOutcome(
                case, list(earlier), error="judge call budget for this run is spent", skipped=True
            )
        tasks = [asyncio.create_task(self.vote(case, budget)) for _ in range(m)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        panel = [*earlier, *(r for r in results if isinstance(r, Vote))]
        if errors:
            for e in errors:
                if not isinstance(e, JudgeCallError):
                    raise e
            return JudgeOutcome(case, panel, error=f"{len(errors)}/{m} votes failed: {errors[0]}")
        verdict = majority(panel)
        if verdict is None:
            reasons = "; ".join(sorted({v.error or "?" for v in panel}))
            return JudgeOutcome(case, panel, error=f"no valid vote ({reasons})")
        return JudgeOutcome(case, panel, verdict)

    async def judge_all(
        self,
        cases: Sequence[JudgeCase],
        budget: CallBudget,
        votes: int | None = None,
        earlier: Mapping[str, Sequence[Vote]] | None = None,
    ) -> list[JudgeOutcome]:
        """Judge every case (`votes` new votes each, added to its `earlier` ones); calls run
        `concurrency` at a time (FIFO, so turns finish in order)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        before = earlier or {}
        try:
            return list(
                await asyncio.gather(
                    *(self.judge(c, budget, votes, before.get(c.turn_id, ())) for c in cases)
                )
            )
        finally:
            self.stats.seconds += loop.time() - start


def parse_reply(body: bytes) -> tuple[str, Usage]:
    """The first choice's message text of a chat-completions body ("" when there is none: an
    empty reply is an invalid vote, not a failed call) and the tokens the call was billed."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "", Usage()
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = ""
    return (content if isinstance(content, str) else ""), of_response(data)


def _retry_after(exc: Exception) -> float:
    """Seconds a 429/503 response asked us to wait (0 when it did not say, or said a date)."""
    if not isinstance(exc, openai.APIStatusError):
        return 0.0
    try:
        return max(0.0, float(exc.response.headers.get("retry-after", "")))
    except ValueError:
        return 0.0


def _short(exc: Exception, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "…"


def outcome_details(outcome: JudgeOutcome, judge: Judge) -> dict[str, Any]:
    """The `votes` JSON of a judge reward row: the panel, and what it depended on."""
    verdict = outcome.verdict
    return {
        "model": judge.endpoint.model,
        "prompt_version": PROMPT_VERSION,
        "votes": [v.value for v in outcome.votes],
        "reasons": [v.reason for v in outcome.votes],
        "invalid": [v.error for v in outcome.votes if not v.valid],
        "agreement": round(verdict.agreement, 4) if verdict else None,
        "tie": verdict.tie if verdict else None,
        "next_state": outcome.case.next_state,
    }
