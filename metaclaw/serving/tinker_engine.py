"""The Tinker engine: the policy server's routes answered by a Tinker `SamplingClient`.

Why: with `training.backend = tinker` the LoRA steps run on Tinker, and the weights they make can
only be sampled there. Behind the same OpenAI-compatible routes as the local engine, this engine
serves the promoted sampler checkpoint (`create_sampling_client(model_path=tinker://…)`), so
users get the trained policy and their turns, recorded with the same `metaclaw` trace (prompt
and completion token ids, the sampler's own logprobs, checkpoint, temperature, top_p), are
on-policy data for the next step.

- **Same prompt tokens as training**: prompts are rendered by `chat.render_prompt` with the
  service's tokenizer (the renderer `training/render.py` uses), encoded here, and sent as a
  `ModelInput` of those ids; the trace records exactly what Tinker saw.
- **Same stopping and streaming as the local engine**: Tinker returns a whole sequence; its
  tokens are replayed through `progress.advance`, which cuts at the end-of-turn token, a stop
  string or `max_tokens` exactly where the local engine would, and streams the same deltas.
- **Atomic swap**: a request takes the current sampler when it starts; `swap` builds the new
  client first (off the event loop, with a deadline) and then replaces the current one in a
  single assignment, so requests in flight finish on the old client and none fails. Only
  persistent sampler paths are accepted (`deploy.durable.check_tinker_path`); ephemeral
  samplers have no path and are never promoted.
- **Failures**: every sample call has a deadline (`policy.tinker_sample_timeout_s`) on a helper
  thread (`call_with_timeout`: the SDK can block before it returns a future); a timeout or a
  service error answers an OpenAI-shaped 503 (`tinker_timeout` / `tinker_unavailable`) and is
  counted; a paused Tinker queue (rate limit, capacity) is reported in /healthz.
- **Admission**: at most `max_batch` sample calls in flight, `max_queue` waiting per priority
  class, interactive first (the same classes as the local engine; nothing to pause here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tinker import types

from metaclaw.serving.checkpoints import CheckpointError
from metaclaw.serving.engine import EngineStats
from metaclaw.serving.priority import Priority
from metaclaw.serving.progress import advance, conclude
from metaclaw.serving.queues import PriorityQueues
from metaclaw.serving.requests import EngineError, Policy, Request, shutting_down
from metaclaw.serving.sampling import SamplingParams, TextTracker
from metaclaw.serving.tokens import TokenizerFace
from metaclaw.training.tinker_backend import TinkerTimeoutError, call_with_timeout

log = logging.getLogger("metaclaw.serving")

# End-of-turn tokens of the chat families Tinker serves (Qwen3 / Kimi ChatML, Llama 3); those
# present in the tokenizer's vocabulary end a reply along with its eos token.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>")


@dataclass(frozen=True)
class _Sampler:
    """A sampling client and the checkpoint it serves; replaced whole, never mutated."""

    policy: Policy
    client: Any


@dataclass
class TinkerStats(EngineStats):
    tinker_timeouts: int = 0
    tinker_errors: int = 0


@dataclass
class QueueReport:
    """The last queue state a sampling client reported (`on_queue_state_change`)."""

    state: str = "active"
    reason: str | None = None
    since: float | None = None


class TinkerEngine(TokenizerFace, PriorityQueues):
    """Serves chat and text completions from a Tinker sampling client, swappable at runtime."""

    answers_whole = True  # a sample call returns the whole sequence

    def __init__(
        self,
        service: Any,
        *,
        name: str,
        base_model: str,
        tokenizer: Any,
        sample_timeout_s: float = 120.0,
        call_timeout_s: float = 600.0,
        max_batch: int = 8,
        max_queue: int = 64,
        max_new_tokens: int = 1024,
        max_context_tokens: int = 4096,
    ) -> None:
        super().__init__(tokenizer)
        self.service = service
        self.name = name
        self.base_model = base_model
        self.sample_timeout_s = sample_timeout_s
        self.call_timeout_s = call_timeout_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_new_tokens = max_new_tokens
        self.max_context_tokens = max_context_tokens
        self.vocab_size = len(tokenizer)
        self.eos_ids = end_of_turn_ids(tokenizer)
        self.stats = TinkerStats()
        self.queue = QueueReport()
        self.last_error: str | None = None
        PriorityQueues.__init__(self)
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._sampler: _Sampler | None = None
        self._started = False
        self._closing = False

    @classmethod
    def connect(
        cls, service: Any, *, base_model: str, call_timeout_s: float, **limits: Any
    ) -> TinkerEngine:
        """An engine on `base_model`: opens its sampler and fetches its tokenizer (both under
        `call_timeout_s`), so a wrong key or model fails here, before the server listens."""
        base = call_with_timeout(
            lambda: service.create_sampling_client(base_model=base_model),
            call_timeout_s,
            "create_sampling_client",
        )
        tokenizer = call_with_timeout(base.get_tokenizer, call_timeout_s, "get_tokenizer")
        engine = cls(
            service,
            base_model=base_model,
            tokenizer=tokenizer,
            call_timeout_s=call_timeout_s,
            **limits,
        )
        engine._observe_queue(base)
        engine._install(None, None, base)
        return engine

    # ----- lifecycle -----------------------------------------------------------------

    def start(self) -> TinkerEngine:
        """Serve the base model unless a checkpoint was swapped in before the start."""
        if self._sampler is None:
            self.swap_blocking(None, None)
        self._started = True
        return self

    def close(self) -> None:
        """Refuse new requests; waiting ones get a 503 (calls in flight end on their own)."""
        self._closing = True
        for queue in self._pending.values():
            while queue:
                req = queue.popleft()
                req.done = True
                req._send(shutting_down())

    @property
    def alive(self) -> bool:
        return self._started and not self._closing

    @property
    def policy(self) -> Policy:
        return self._sampler.policy if self._sampler is not None else Policy()

    @property
    def active(self) -> int:
        return self._running

    @property
    def paused(self) -> int:
        return 0  # a sample call in flight cannot be paused

    def health(self) -> dict[str, Any]:
        return {
            "engine": "tinker",
            "base_model": self.base_model,
            "sampler_path": self.policy.path,
            "tinker": {
                "queue_state": self.queue.state,
                "queue_reason": self.queue.reason,
                "queue_state_since": self.queue.since,
                "last_error": self.last_error,
            },
        }

    # ----- requests ------------------------------------------------------------------

    def submit(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        stream: bool,
        timeout_s: float,
        priority: Priority = Priority.INTERACTIVE,
    ) -> Request:
        """Queue a generation (call from the event loop); 503 when its class's queue is full,
        400 for what a Tinker sampler cannot do."""
        _refuse_unsupported(params)
        if not self.alive:
            raise shutting_down()
        req = self.new_request(prompt_ids, params, stream, timeout_s, priority)
        self.enqueue(req)
        self._admit()
        return req

    def _admit(self) -> None:
        """Start waiting requests, interactive first, while fewer than max_batch run."""
        while self._running < self.max_batch and not self._closing:
            req = self._next_waiting()
            if req is None:
                return
            assert self._sampler is not None
            self._running += 1
            task = req.loop.create_task(self._serve(req, self._sampler))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _next_waiting(self) -> Request | None:
        for priority in sorted(Priority):  # lower value first: interactive
            queue = self._pending[priority]
            while queue:
                req = queue.popleft()
                if req.cancelled:
                    self.stats.cancelled += 1
                    req.done = True
                    continue
                return req
        return None

    async def _serve(self, req: Request, sampler: _Sampler) -> None:
        try:
            req.policy = sampler.policy
            req.tracker = TextTracker(self.decode, req.params.stop, req.params.detect_tools)
            budget = min(self.sample_timeout_s, req.deadline - time.monotonic())
            self.stats.prompt_tokens += len(req.prompt_ids)
            try:
                if budget <= 0:
                    raise TinkerTimeoutError("the request waited past policy.request_timeout_s")
                response = await asyncio.to_thread(
                    call_with_timeout, self._sample_call(req, sampler), budget, "sample"
                )
            except TinkerTimeoutError as exc:
                self.stats.tinker_timeouts += 1
                self.last_error = str(exc)
                self._fail(req, _tinker_error(f"Tinker did not answer in time: {exc}", "timeout"))
                return
            except Exception as exc:  # the service failed this call; the server keeps serving
                log.warning("Tinker sample failed: %s", exc)
                self.stats.tinker_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                self._fail(req, _tinker_error(f"Tinker sampling failed: {exc}", "unavailable"))
                return
            if req.cancelled:
                self.stats.cancelled += 1
                req.done = True
                return
            self._deliver(req, response.sequences[0])
        except Exception as exc:  # a bug fails this request, never the engine
            log.exception("tinker engine failed a request")
            self._fail(req, EngineError(500, f"generation failed: {exc}", "generation_error"))
        finally:
            self._running -= 1
            self._admit()

    def _sample_call(self, req: Request, sampler: _Sampler) -> Callable[[], Any]:
        params = req.params
        stop: list[str] | list[int] = list(params.stop) or sorted(self.eos_ids)
        sampling = types.SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
            stop=stop,
        )
        prompt = types.ModelInput.from_ints(req.prompt_ids)

        def call() -> Any:
            return sampler.client.sample(prompt=prompt, num_samples=1, sampling_params=sampling)

        return call

    def _deliver(self, req: Request, seq: types.SampledSequence) -> None:
        """Replay the sampled tokens through the local engine's stopping rules, then finish."""
        tokens, logprobs = list(seq.tokens), list(seq.logprobs or [])
        if len(logprobs) != len(tokens):
            raise ValueError("Tinker returned a sequence without one logprob per token")
        finish: str | None = None
        for token, logprob in zip(tokens, logprobs, strict=True):
            self.stats.tokens_generated += 1
            finish = advance(req, int(token), float(logprob), [], self.eos_ids)
            if finish is not None:
                break
        if finish is None:
            finish = "length" if seq.stop_reason == "length" else "stop"
        self.stats.completed += 1
        conclude(req, finish)

    def _fail(self, req: Request, err: EngineError) -> None:
        if req.done:
            return
        req.done = True
        self.stats.failed += 1
        req._send(err)

    # ----- checkpoints ---------------------------------------------------------------

    def locate(
        self, home: Path, checkpoint_id: str | None, recorded: str | None
    ) -> tuple[str | None, str]:
        """(label, the persistent sampler path); anything else is a `CheckpointError`."""
        from metaclaw.deploy.durable import NotServableError, check_tinker_path

        if not recorded:
            raise CheckpointError(
                f"checkpoint {checkpoint_id!r} has no Tinker sampler path (the tinker engine "
                "serves tinker://…/sampler_weights/… checkpoints)"
            )
        try:
            path = check_tinker_path(recorded)
        except NotServableError as exc:
            raise CheckpointError(str(exc)) from None
        return checkpoint_id or path.rstrip("/").rsplit("/", 1)[-1], path

    async def swap(self, checkpoint_id: str | None, target: str | None) -> Policy:
        """Serve `target` (a sampler path; None: the base model) to requests admitted from now
        on; the client is built before anything changes, so a failure changes nothing."""
        client = await asyncio.to_thread(self._client_for, target)
        return self._install(checkpoint_id, target, client)

    def swap_blocking(self, checkpoint_id: str | None, target: str | None) -> Policy:
        """The same as `swap`, for callers without an event loop (startup)."""
        return self._install(checkpoint_id, target, self._client_for(target))

    def _client_for(self, path: str | None) -> Any:
        kwargs = {"model_path": path} if path else {"base_model": self.base_model}
        try:
            client = call_with_timeout(
                lambda: self.service.create_sampling_client(**kwargs),
                self.call_timeout_s,
                "create_sampling_client",
            )
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise EngineError(
                503,
                f"Tinker could not open a sampler on {path or self.base_model}: {exc}",
                "tinker_unavailable",
                "server_error",
            ) from None
        self._observe_queue(client)
        return client

    def _install(self, checkpoint_id: str | None, path: str | None, client: Any) -> Policy:
        policy = Policy(checkpoint_id=checkpoint_id if path else None, path=path)
        self._sampler = _Sampler(policy, client)  # one assignment: the swap is atomic
        self.stats.swaps += 1
        log.info("tinker policy now %s (%s)", policy.checkpoint_id or "base model", path or "-")
        return policy

    def _observe_queue(self, client: Any) -> None:
        """Record the queue states the SDK reports to the client (rate limit, capacity), so
        /healthz and `metaclaw status` can say why replies are slow; the SDK's own handling
        (a logged warning) still runs."""
        original = getattr(client, "on_queue_state_change", None)

        def observe(queue_state: Any, queue_state_reason: str | None) -> None:
            state = str(getattr(queue_state, "value", queue_state))
            if state != self.queue.state:
                self.queue = QueueReport(state, queue_state_reason, time.time())
            if original is not None:
                original(queue_state, queue_state_reason)

        with contextlib.suppress(AttributeError):  # a client without the hook: no report
            client.on_queue_state_change = observe


def end_of_turn_ids(tokenizer: Any) -> frozenset[int]:
    """The tokenizer's eos token plus the known end-of-turn tokens it has."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_OF_TURN if t in vocab)
    return frozenset(int(i) for i in ids)


def _refuse_unsupported(params: SamplingParams) -> None:
    """What the local engine does on its own logits and a Tinker sampler cannot."""
    refused = [
        (params.constraint is not None, "response_format", "constrained decoding"),
        (params.top_logprobs > 0, "top_logprobs", "top_logprobs"),
        (params.prompt_logprobs, "logprobs", "prompt logprobs (echo with logprobs)"),
        (params.ignore_eos, "ignore_eos", "ignore_eos"),
    ]
    for hit, param, what in refused:
        if hit:
            raise EngineError(
                400,
                f"{what} is not supported by the tinker engine (policy.engine=tinker)",
                "unsupported_parameter",
                param=param,
            )


def _tinker_error(message: str, kind: str) -> EngineError:
    return EngineError(503, message, f"tinker_{kind}", "server_error")
