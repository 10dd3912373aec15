"""The critic LLM: an OpenAI-compatible endpoint that answers in JSON, validated before use.

Why validated: the critic's output becomes diagnoses and then skills that are injected into
every later conversation. A reply that is not the JSON asked for (prose, a code fence around
half an object, an unknown category) is retried and then rejected, never repaired by guessing.
Every call counts against `critic.max_calls_per_run`, retries included, so a run's cost is
bounded whatever the critic does; every answered call is a `model_calls` row (its tokens, the turn
it was about), and once the daily budget is spent (`costs.daily_budget_usd`) no call is made.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from metaclaw.config import LedgerPaths
from metaclaw.costs.calls import call_row, record_calls
from metaclaw.costs.store import daily_budget
from metaclaw.costs.usage import normalise
from metaclaw.serving.constrained import response_format
from metaclaw.serving.priority import BACKGROUND_HEADERS

log = logging.getLogger(__name__)
T = TypeVar("T", bound=BaseModel)

_FENCE = re.compile(r"^```[a-zA-Z]*\s*\n(.*?)\n?```\s*$", re.S)


class CriticError(RuntimeError):
    """The critic did not give a valid answer (after retries)."""


class CriticBudgetExceeded(CriticError):
    """`critic.max_calls_per_run` calls were used up."""


class CriticNotConfigured(CriticError):
    pass


class CriticUnavailable(CriticError):
    """Every attempt failed to reach the critic: the run stops instead of trying each item."""


@dataclass(frozen=True)
class CriticEndpoint:
    base_url: str
    model: str
    api_key: str
    azure_api_version: str | None = None  # set: Azure OpenAI (base_url = resource endpoint)
    local: bool = False  # the local policy server: its calls cost nothing

    def __repr__(self) -> str:  # never print the key
        return f"CriticEndpoint(base_url={self.base_url!r}, model={self.model!r})"


def critic_endpoint(settings: Any) -> CriticEndpoint | None:
    """The configured critic: `critic.base_url` + `critic.model`, or `critic.model` alone on
    the upstream's base URL and key; with no model, the local policy server (unless
    `critic.local_default` is off, then None)."""
    from metaclaw.providers import ProviderConfigError, azure_endpoint

    try:
        azure = azure_endpoint(settings, "critic")  # an Azure OpenAI deployment, when set
    except ProviderConfigError as exc:
        raise CriticNotConfigured(str(exc)) from None
    if azure is not None:
        key = azure.api_key.get_secret_value() if azure.api_key else "not-needed"
        return CriticEndpoint(azure.base_url, azure.model, key, azure.azure_api_version)
    critic = settings.critic
    if not critic.model:
        if not critic.local_default:
            return None
        from metaclaw.endpoints import local_policy_endpoint, policy_model

        local = local_policy_endpoint(settings)
        key = local.api_key.get_secret_value() if local.api_key else "not-needed"
        return CriticEndpoint(local.base_url, policy_model(settings), key, local=True)
    base_url = critic.base_url or settings.upstream.base_url
    if not base_url:
        return None
    key = critic.api_key if critic.base_url else (critic.api_key or settings.upstream.api_key)
    return CriticEndpoint(
        base_url.rstrip("/"), critic.model, key.get_secret_value() if key else "not-needed"
    )


NOT_CONFIGURED = (
    "no critic LLM configured: set METACLAW_CRITIC__MODEL (and METACLAW_CRITIC__BASE_URL, or "
    "it uses the upstream's) to an OpenAI-compatible model, or turn critic.local_default on "
    "to use the local policy server"
)


def extract_json(text: str) -> Any:
    """The JSON value of a reply: the whole text, or the one fenced block, or the outermost
    {...}. Raises ValueError when none parses."""
    text = (text or "").strip()
    fenced = _FENCE.match(text)
    candidates = [text]
    if fenced:
        candidates.append(fenced.group(1))
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    raise ValueError(f"the critic's reply is not JSON: {text[:200]!r}")


class Critic:
    """Calls the critic with a system + user prompt and validates the JSON into a model."""

    def __init__(
        self,
        endpoint: CriticEndpoint,
        *,
        timeout_s: float = 120.0,
        retries: int = 2,
        max_calls: int = 50,
        temperature: float = 0.2,
        max_tokens: int = 1500,
        backoff_s: float = 0.5,
        json_schema: bool = True,
        ledger: LedgerPaths | None = None,
        refused: str | None = None,
    ) -> None:
        """`ledger`: where each answered call is recorded (`model_calls`); `refused`: why no
        call may be made at all (the daily budget is spent), raised by every `ask`."""
        from metaclaw.providers import openai_client

        self.endpoint = endpoint
        self.model = endpoint.model
        self.retries = retries
        self.max_calls = max_calls
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.backoff_s = backoff_s
        self.json_schema = json_schema
        self.ledger = ledger
        self.refused = refused
        self.calls = 0
        self.invalid = 0
        self.client = openai_client(endpoint, timeout=timeout_s, max_retries=0)  # or Azure

    @classmethod
    def from_settings(cls, settings: Any) -> Critic:
        endpoint = critic_endpoint(settings)
        if endpoint is None:
            raise CriticNotConfigured(NOT_CONFIGURED)
        c = settings.critic
        budget = daily_budget(settings)
        if budget.exhausted:
            log.warning("critic: %s", budget.note())
        return cls(
            endpoint,
            timeout_s=c.timeout_s,
            retries=c.retries,
            max_calls=c.max_calls_per_run,
            temperature=c.temperature,
            max_tokens=c.max_tokens,
            json_schema=c.json_schema,
            ledger=settings.paths,
            refused=budget.note() if budget.exhausted else None,
        )

    @property
    def budget_left(self) -> int:
        return max(0, self.max_calls - self.calls)

    def ask(self, system: str, user: str, schema: type[T], turn_id: str | None = None) -> T:
        """One validated answer; CriticError after `retries` invalid or failed attempts.
        `turn_id`: the turn the question is about, which its calls' costs are booked to."""
        if self.refused is not None:
            raise CriticBudgetExceeded(self.refused)
        problems: list[str] = []
        unreachable = 0
        for attempt in range(self.retries + 1):
            if self.calls >= self.max_calls:
                raise CriticBudgetExceeded(
                    f"critic call budget of {self.max_calls} per run used up "
                    "(critic.max_calls_per_run)"
                )
            self.calls += 1
            try:
                text = self._complete(system, user, schema, turn_id)
                return schema.model_validate(extract_json(text))
            except (ValueError, ValidationError) as exc:
                self.invalid += 1
                problems.append(_short(exc))
                log.warning("critic reply rejected (attempt %d): %s", attempt + 1, problems[-1])
            except Exception as exc:  # HTTP errors, timeouts: retried like invalid answers
                unreachable += _is_unreachable(exc)
                problems.append(f"{type(exc).__name__}: {exc}")
                log.warning("critic call failed (attempt %d): %s", attempt + 1, problems[-1])
                time.sleep(self.backoff_s * (2**attempt))
        if unreachable == self.retries + 1:
            raise CriticUnavailable(
                f"the critic at {self.endpoint.base_url} is unreachable: " + problems[-1]
            )
        raise CriticError("the critic gave no valid answer: " + " | ".join(problems))

    def _complete(
        self, system: str, user: str, schema: type[BaseModel], turn_id: str | None
    ) -> str:
        resp = self.client.chat.completions.create(
            model=self.model,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            extra_headers=BACKGROUND_HEADERS,  # users first on a shared policy server
            response_format=(
                response_format(schema.model_json_schema(), schema.__name__, self.max_tokens)
                if self.json_schema
                else {"type": "json_object"}
            ),
        )
        if self.ledger is not None:  # answered, so billed, whether the answer is valid or not
            usage = normalise(resp.usage.model_dump() if resp.usage else None)
            row = call_row("critic", self.model, turn_id, usage, local=self.endpoint.local)
            record_calls(self.ledger, [row])
        return resp.choices[0].message.content or ""


def _is_unreachable(exc: Exception) -> bool:
    import openai

    return isinstance(exc, openai.APIConnectionError)  # includes APITimeoutError


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
    return str(exc)[:300]
