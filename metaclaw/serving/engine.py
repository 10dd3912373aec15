"""The policy engine: one model, one worker thread, many concurrent requests, swappable LoRA.

Why a single worker thread: torch on a small CPU is fastest when one thread of control issues
the forward passes, and it makes every change to the model (loading or dropping a LoRA
adapter) happen *between* forward passes, never during one. Requests are admitted from a
bounded queue into groups; each group is a left-padded batch with its own KV cache, bound at
admission to the policy (base weights + adapter) that was current then. The worker advances
every group one token per round, so streams make progress together, and a group keeps its
adapter until its last row finishes: a swap never changes the weights under a running request.

Two priority classes (`priority.py`): each has its own bounded queue, and between rounds the
scheduler (`scheduler.py`) admits interactive requests first and pauses background groups (KV
cache kept, resumed later where they stopped) while users are served. The adapter pool is
`adapters.py`; the request and event types are `requests.py`.

Every sampled token is reported with its untempered log-probability (see `sampling.py`), so
the turns this engine serves are on-policy training data.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metaclaw.models.decoding import left_padded, seeded_generator
from metaclaw.serving.adapters import AdapterError, AdapterPool
from metaclaw.serving.checkpoints import adapter_dir
from metaclaw.serving.constrained import Guides
from metaclaw.serving.priority import Priority
from metaclaw.serving.progress import advance, conclude
from metaclaw.serving.queues import PriorityQueues
from metaclaw.serving.requests import (
    Delta,
    EngineError,
    Policy,
    Request,
    Result,
    shutting_down,
)
from metaclaw.serving.sampling import SamplingParams, TextTracker, choose
from metaclaw.serving.scheduler import plan, within_budget
from metaclaw.serving.tokens import TokenizerFace

log = logging.getLogger("metaclaw.serving")

# The request types live in `requests.py`, the adapter pool in `adapters.py`; they are re-exported
# here because callers think of them as the engine's.
__all__ = [
    "AdapterError",
    "Delta",
    "EngineError",
    "EngineStats",
    "Policy",
    "PolicyEngine",
    "Request",
    "Result",
]


@dataclass(eq=False)
class _Group:
    """Rows prefilled together: one KV cache, one policy, one left-padded attention mask, one
    priority class. A paused group keeps all of it and is skipped by the decode loop."""

    rows: list[Request]
    policy: Policy
    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor
    priority: Priority = Priority.INTERACTIVE
    paused: bool = False

    @property
    def size(self) -> int:
        return sum(1 for r in self.rows if not r.done)


@dataclass
class EngineStats:
    completed: int = 0
    failed: int = 0
    timed_out: int = 0
    rejected: int = 0
    cancelled: int = 0
    swaps: int = 0
    tokens_generated: int = 0
    prompt_tokens: int = 0
    preempted: int = 0  # background groups paused for interactive requests
    resumed: int = 0


@dataclass
class _Command:
    run: Callable[[], Any]
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[Any] | None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class PolicyEngine(TokenizerFace, PriorityQueues):
    """Serves one causal LM (+ optional LoRA) to many concurrent requests from one thread."""

    answers_whole = False  # tokens stream as they are generated

    def __init__(
        self,
        model_dir: Path,
        *,
        name: str,
        device: str = "cpu",
        dtype: str = "float32",
        max_batch: int = 8,
        max_queue: int = 64,
        max_new_tokens: int = 1024,
        max_context_tokens: int = 4096,
        background_rows_while_interactive: int = 0,
        background_prefill_tokens: int = 0,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.name = name
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        super().__init__(AutoTokenizer.from_pretrained(self.model_dir))
        model: Any = AutoModelForCausalLM.from_pretrained(
            self.model_dir, dtype=getattr(torch, dtype)
        )
        self.model = model.to(self.device).eval()
        self.max_batch = max_batch
        self.max_queue = max_queue  # per priority class: a background flood never fills users'
        self.background_cap = max(0, min(background_rows_while_interactive, max_batch))
        self.background_prefill_tokens = background_prefill_tokens  # per round; 0: no limit
        self.max_new_tokens = max_new_tokens
        window = getattr(self.model.config, "max_position_embeddings", None) or max_context_tokens
        self.max_context_tokens = min(max_context_tokens, int(window))
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.pad_id = next(
            (t for t in (self.tokenizer.pad_token_id, *sorted(self.eos_ids)) if t is not None), 0
        )
        self.vocab_size = int(self.model.get_input_embeddings().weight.shape[0])
        self._guides = Guides(self.tokenizer, self.vocab_size, self.eos_ids, self._tok_lock)
        self._cv = threading.Condition()
        PriorityQueues.__init__(self)
        self._groups: list[_Group] = []
        self._commands: deque[_Command] = deque()
        self._policy = Policy()
        self._adapters = AdapterPool(self.model, name)
        # called on the worker between rounds (tests pause the worker at a round boundary)
        self.round_hook: Callable[[], None] | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self.stats = EngineStats()

    # ----- lifecycle -----------------------------------------------------------------

    def start(self) -> PolicyEngine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="policy-engine", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the worker; requests still queued or running get a 503."""
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(30)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def active(self) -> int:
        """Requests generating now (admitted, not finished, not paused)."""
        return sum(g.size for g in list(self._groups) if not g.paused)

    @property
    def paused(self) -> int:
        """Background requests admitted but paused while interactive ones run."""
        return sum(g.size for g in list(self._groups) if g.paused)

    def health(self) -> dict[str, Any]:
        return {
            "engine": "local",
            "model_dir": str(self.model_dir),
            "adapter_path": self._policy.path,
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
        """Queue a generation (call from the event loop); raises EngineError 503 when its
        class's queue is full."""
        req = self.new_request(prompt_ids, params, stream, timeout_s, priority)
        with self._cv:
            if self._closing or not self.alive:
                raise shutting_down()
            self.enqueue(req)
            self._cv.notify_all()
        return req

    # ----- adapters ------------------------------------------------------------------

    def locate(
        self, home: Path, checkpoint_id: str | None, recorded: str | None
    ) -> tuple[str | None, Path]:
        """(label, adapter directory): the recorded path, else the conventional one; a
        Tinker-hosted checkpoint is a `CheckpointError` (this engine serves local LoRA)."""
        target = adapter_dir(home, checkpoint_id, recorded)
        return checkpoint_id or target.name, target

    def validate_adapter(self, path: Path) -> dict[str, Any]:
        """Check a peft LoRA directory fits this model before touching the model."""
        return self._adapters.validate(path)

    async def swap(self, checkpoint_id: str | None, path: Path | None) -> Policy:
        """Make (checkpoint_id, path) the policy for new requests; None/None = base weights.

        Requests already running keep their weights until they finish; none fails.
        """
        if path is not None:
            await asyncio.to_thread(self._adapters.validate, path)
        return await self._command(lambda: self._swap_now(checkpoint_id, path))

    def swap_blocking(self, checkpoint_id: str | None, path: Path | None) -> Policy:
        """The same as `swap`, for callers without an event loop (startup, benchmarks)."""
        if path is not None:
            self._adapters.validate(path)
        if not self.alive:
            return self._swap_now(checkpoint_id, path)
        cmd = _Command(run=lambda: self._swap_now(checkpoint_id, path), loop=None, future=None)
        self._enqueue(cmd)
        cmd.done.wait()
        if cmd.error is not None:
            raise cmd.error
        return cmd.result

    async def _command(self, run: Callable[[], Any]) -> Any:
        loop = asyncio.get_running_loop()
        cmd = _Command(run=run, loop=loop, future=loop.create_future())
        self._enqueue(cmd)
        assert cmd.future is not None
        return await cmd.future

    def _enqueue(self, cmd: _Command) -> None:
        with self._cv:
            if self._closing or not self.alive:
                raise shutting_down()
            self._commands.append(cmd)
            self._cv.notify_all()

    def _swap_now(self, checkpoint_id: str | None, path: Path | None) -> Policy:
        """Runs on the worker thread (or before it starts): between forward passes."""
        current = self._policy
        if path is None:
            self._policy = Policy(checkpoint_id=checkpoint_id, adapter=None, path=None)
        elif current.path == str(path) and current.checkpoint_id == checkpoint_id:
            return current  # already serving exactly this
        else:
            name = self._adapters.load(path)
            self._policy = Policy(checkpoint_id=checkpoint_id, adapter=name, path=str(path))
        self.stats.swaps += 1
        log.info(
            "policy now %s (%s)",
            self._policy.checkpoint_id or "base model",
            self._policy.path or "no adapter",
        )
        return self._policy

    def _drop_unused_adapters(self) -> None:
        """Free adapters no group (running or paused) uses, nor new requests."""
        in_use = [g.policy.adapter for g in self._groups]
        self._adapters.drop_unused([*in_use, self._policy.adapter])

    # ----- the worker ----------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                if self.round_hook is not None:
                    self.round_hook()
                with self._cv:
                    while not (self._closing or self.queued or self._groups or self._commands):
                        self._cv.wait()
                    if self._closing:
                        break
                    commands = list(self._commands)
                    self._commands.clear()
                    admitted = self._schedule()
                for cmd in commands:
                    self._run_command(cmd)
                self._prefill_all(admitted)
                for group in list(self._groups):
                    try:
                        if group.paused:
                            self._prune(group)  # a paused row can still be cancelled or expire
                        else:
                            self._step(group)
                    except Exception as exc:  # a bug fails this group, never the others
                        log.exception("policy engine step failed")
                        self._fail_group(group, _generation_error(exc))
                try:
                    self._drop_unused_adapters()
                except Exception:  # only memory is at stake; retried next round
                    log.exception("dropping unused adapters failed")
        self._fail_all(shutting_down(), include_pending=True)

    def _schedule(self) -> list[Request]:
        """Between rounds, under the lock: drop dead waiting requests, pause or resume
        background groups, and take the requests to prefill now (see `scheduler.py`)."""
        now = time.monotonic()
        for queue in self._pending.values():
            for req in [r for r in queue if r.cancelled or r.deadline <= now]:
                queue.remove(req)
                self._finish_dropped(req, now)
        interactive = self._pending[Priority.INTERACTIVE]
        background = self._pending[Priority.BACKGROUND]
        decision = plan(
            self._groups,
            waiting_interactive=len(interactive),
            waiting_background=len(background),
            max_batch=self.max_batch,
            background_cap=self.background_cap,
        )
        for group in decision.pause:
            group.paused = True
            self.stats.preempted += 1
        for group in decision.resume:
            group.paused = False
            self.stats.resumed += 1
        admitted = [interactive.popleft() for _ in range(decision.admit_interactive)]
        most = decision.admit_background
        lengths = [len(r.prompt_ids) for r in itertools.islice(background, most)]
        take = within_budget(lengths, most, self.background_prefill_tokens)
        admitted += [background.popleft() for _ in range(take)]
        return admitted

    def _run_command(self, cmd: _Command) -> None:
        try:
            cmd.result = cmd.run()
        except BaseException as exc:  # reported to the caller, never raised here
            cmd.error = exc
        cmd.done.set()
        if cmd.loop is not None and cmd.future is not None:
            fut = cmd.future

            def resolve() -> None:
                if fut.done():
                    return
                if cmd.error is not None:
                    fut.set_exception(cmd.error)
                else:
                    fut.set_result(cmd.result)

            with contextlib.suppress(RuntimeError):
                cmd.loop.call_soon_threadsafe(resolve)

    def _prefill_all(self, admitted: list[Request]) -> None:
        if not admitted:
            return
        plain = [r for r in admitted if not r.params.prompt_logprobs]
        scored = [[r] for r in admitted if r.params.prompt_logprobs]
        by_class = [[r for r in plain if r.priority is p] for p in Priority]  # pausable apart
        for batch in [b for b in by_class if b] + scored:
            try:
                self._prefill(batch)
            except Exception as exc:
                log.exception("prefill failed")
                for req in batch:
                    self._fail(req, _generation_error(exc))
                for group in [g for g in self._groups if any(r in batch for r in g.rows)]:
                    self._prune(group)

    def _prefill(self, rows: Sequence[Request]) -> None:
        policy = self._policy
        ids, mask, positions = left_padded([r.prompt_ids for r in rows], self.pad_id)
        width = ids.shape[1]
        for req in rows:
            req.policy = policy
            req.generator = seeded_generator(req.params.seed)
            req.tracker = TextTracker(self.decode, req.params.stop, req.params.detect_tools)
            self.stats.prompt_tokens += len(req.prompt_ids)
        full = any(r.params.prompt_logprobs for r in rows)
        with self._adapters.weights(policy):
            out = self.model(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                position_ids=positions.to(self.device),
                use_cache=True,
                logits_to_keep=0 if full else 1,
            )
        logits = out.logits
        for i, req in enumerate(rows):
            if req.params.prompt_logprobs:
                self._score_prompt(req, logits[i, width - len(req.prompt_ids) :])
        group = _Group(
            rows=list(rows),
            policy=policy,
            cache=_cache_of(out),
            mask=mask,
            positions=positions[:, -1].clone(),
            priority=max(r.priority for r in rows),
        )
        self._groups.append(group)
        for i, req in enumerate(rows):
            if req.params.max_tokens == 0:
                self._complete(req, "length")
            else:
                self._take_or_fail(req, logits[i, -1])
        self._prune(group)

    def _score_prompt(self, req: Request, logits: torch.Tensor) -> None:
        logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
        targets = torch.tensor(req.prompt_ids[1:], dtype=torch.long, device=logprobs.device)
        chosen = logprobs.gather(-1, targets[:, None]).squeeze(-1).tolist()
        req.prompt_logprobs = [None, *chosen]
        k = req.params.top_logprobs
        if k > 0:
            values, top_ids = torch.topk(logprobs, k, dim=-1)
            req.prompt_top = [
                [],
                *(
                    [(int(t), float(v)) for t, v in zip(ti, vi, strict=True)]
                    for ti, vi in zip(top_ids, values, strict=True)
                ),
            ]

    def _step(self, group: _Group) -> None:
        self._prune(group)
        if not group.rows:
            return
        last = torch.tensor([[r.completion_ids[-1]] for r in group.rows], dtype=torch.long)
        group.mask = torch.cat(
            [group.mask, torch.ones((len(group.rows), 1), dtype=torch.long)], dim=1
        )
        group.positions = group.positions + 1
        try:
            with self._adapters.weights(group.policy):
                out = self.model(
                    input_ids=last.to(self.device),
                    attention_mask=group.mask.to(self.device),
                    position_ids=group.positions[:, None].to(self.device),
                    cache=group.cache,
                    use_cache=True,
                )
        except Exception as exc:
            log.exception("decode step failed")
            self._fail_group(group, _generation_error(exc))
            return
        group.cache = _cache_of(out)
        for i, req in enumerate(group.rows):
            self._take_or_fail(req, out.logits[i, -1])
        self._prune(group)

    def _take_or_fail(self, req: Request, logits: torch.Tensor) -> None:
        """`_take`, with a failure confined to the request whose sampling raised."""
        try:
            self._take(req, logits)
        except Exception as exc:
            log.exception("sampling failed")
            self._fail(req, _generation_error(exc))

    def _fail_group(self, group: _Group, err: EngineError) -> None:
        for req in group.rows:
            self._fail(req, err)
        self._prune(group)

    def _prune(self, group: _Group) -> None:
        """Drop finished, cancelled and timed-out rows (and the group once empty).

        Idempotent: an emptied group has no rows left and is gone from `_groups`, so a second
        prune in the same round (the step's own, after the one that emptied it) does nothing.
        """
        now = time.monotonic()
        for req in group.rows:
            if not req.done and (req.cancelled or req.deadline <= now):
                self._finish_dropped(req, now)
        keep = [i for i, r in enumerate(group.rows) if not r.done]
        if not keep:
            group.rows = []
            group.cache = None  # the KV cache is freed now, not when the last reference goes
            if group in self._groups:
                self._groups.remove(group)
            return
        if len(keep) < len(group.rows):
            index = torch.tensor(keep, dtype=torch.long)
            group.cache.batch_select_indices(index.to(self.device))
            group.mask = group.mask[index]
            group.positions = group.positions[index]
            group.rows = [group.rows[i] for i in keep]

    def _take(self, req: Request, logits: torch.Tensor) -> None:
        """Sample the next token of `req` from its logits, report it, and maybe finish."""
        # on the CPU: the per-request generator is a CPU generator (seeded, device-independent)
        if req.guide is None and req.params.constraint is not None:  # here: fails only this row
            req.guide = self._guides.start(req.params.constraint)
        token, logprob, top = choose(logits.float().cpu(), req.params, req.generator, req.guide)
        self.stats.tokens_generated += 1
        finish = advance(req, token, logprob, top, self.eos_ids)
        if finish is not None:
            self._complete(req, finish)

    def _complete(self, req: Request, finish: str) -> None:
        self.stats.completed += 1
        conclude(req, finish)

    def _finish_dropped(self, req: Request, now: float) -> None:
        if req.cancelled:
            self.stats.cancelled += 1
            req.done = True
            return
        self.stats.timed_out += 1
        self._fail(
            req,
            EngineError(
                504,
                "the request took longer than policy.request_timeout_s and was stopped",
                "timeout",
                "server_error",
            ),
        )

    def _fail(self, req: Request, err: EngineError) -> None:
        if req.done:
            return
        req.done = True
        self.stats.failed += 1
        req._send(err)

    def _fail_all(self, err: EngineError, include_pending: bool = False) -> None:
        for group in list(self._groups):
            for req in group.rows:
                self._fail(req, err)
        self._groups.clear()
        if include_pending:
            with self._cv:
                for queue in self._pending.values():
                    while queue:
                        self._fail(queue.popleft(), err)
                commands = list(self._commands)
                self._commands.clear()
            for cmd in commands:
                cmd.run = _raiser(err)
                self._run_command(cmd)


def _generation_error(exc: Exception) -> EngineError:
    return EngineError(500, f"generation failed: {exc}", "generation_error", "server_error")


def _raiser(err: Exception) -> Callable[[], Any]:
    def run() -> Any:
        raise err

    return run


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)
