"""The policy engine: one model, one worker thread, many concurrent requests, swappable LoRA.

Why a single worker thread: torch on a small CPU is fastest when one thread of control issues
the forward passes, and it makes every change to the model (loading or dropping a LoRA
adapter) happen *between* forward passes, never during one. Requests are admitted from a
bounded queue into groups; each group is a left-padded batch with its own KV cache, bound at
admission to the policy (base weights + adapter) that was current then. The worker advances
every group one token per round, so streams make progress together, and a group keeps its
adapter until its last row finishes: a swap never changes the weights under a running request.

Every sampled token is reported with its untempered log-probability (see `sampling.py`), so
the turns this engine serves are on-policy training data.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from metaclaw.serving.constrained import Guide, Guides
from metaclaw.serving.sampling import SamplingParams, TextTracker, choose, split_tool_calls

log = logging.getLogger("metaclaw.serving")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class EngineError(Exception):
    """A request the engine cannot serve; `status`/`code` map to an OpenAI-shaped error."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        kind: str = "invalid_request_error",
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.kind = kind
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "code": self.code,
                "param": self.param,
            }
        }


def overloaded(queued: int, limit: int) -> EngineError:
    return EngineError(
        503,
        f"policy server overloaded: {queued} requests already queued "
        f"(policy.max_queue={limit}); retry shortly",
        "overloaded",
        "server_error",
    )


@dataclass(frozen=True)
class Policy:
    """The weights a request runs on: the base model, plus a LoRA adapter when `adapter` is set."""

    checkpoint_id: str | None = None
    adapter: str | None = None  # the adapter's name inside the peft model
    path: str | None = None


@dataclass
class Result:
    """A finished generation."""

    prompt_ids: list[int]
    completion_ids: list[int]
    completion_logprobs: list[float]
    completion_top: list[list[tuple[int, float]]]
    prompt_logprobs: list[float | None] | None
    prompt_top: list[list[tuple[int, float]]] | None
    text: str
    tool_calls: list[dict[str, Any]]
    finish_reason: str
    checkpoint: str | None
    temperature: float


@dataclass
class Delta:
    """One sampled token, streamed: newly releasable text (may be empty) and the token."""

    text: str
    token_id: int | None  # None: text released at the end, no new token
    logprob: float | None
    top: list[tuple[int, float]]


@dataclass(eq=False)
class Request:
    """One generation in flight; the async side reads `events`, the worker fills it."""

    prompt_ids: list[int]
    params: SamplingParams
    stream: bool
    deadline: float
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Delta | Result | EngineError] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    done: bool = False
    policy: Policy | None = None
    generator: torch.Generator | None = None
    tracker: TextTracker | None = None
    guide: Guide | None = None  # response_format: masks and tracks the grammar
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    prompt_logprobs: list[float | None] | None = None
    prompt_top: list[list[tuple[int, float]]] | None = None

    def cancel(self) -> None:
        """Called from the async side (client gone); the worker drops the row next round."""
        self.cancelled = True

    def _send(self, event: Delta | Result | EngineError) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop is gone (shutdown)
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass(eq=False)
class _Group:
    """Rows prefilled together: one KV cache, one policy, one left-padded attention mask."""

    rows: list[Request]
    policy: Policy
    cache: Any
    mask: torch.Tensor
    positions: torch.Tensor


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


@dataclass
class _Command:
    run: Callable[[], Any]
    loop: asyncio.AbstractEventLoop | None
    future: asyncio.Future[Any] | None
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class AdapterError(ValueError):
    """An adapter directory that cannot be served on this model; the message says why."""


class PolicyEngine:
    """Serves one causal LM (+ optional LoRA) to many concurrent requests from one thread."""

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
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.name = name
        self.model_dir = Path(model_dir)
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = (
            AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=getattr(torch, dtype))
            .to(self.device)
            .eval()
        )
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.max_new_tokens = max_new_tokens
        window = getattr(self.model.config, "max_position_embeddings", None) or max_context_tokens
        self.max_context_tokens = min(max_context_tokens, int(window))
        self.eos_ids = _eos_ids(self.model, self.tokenizer)
        self.pad_id = next(
            (t for t in (self.tokenizer.pad_token_id, *sorted(self.eos_ids)) if t is not None), 0
        )
        self.vocab_size = int(self.model.get_input_embeddings().weight.shape[0])
        self._linear_shapes = _linear_shapes(self.model)
        self._tok_lock = threading.Lock()
        self._guides = Guides(self.tokenizer, self.vocab_size, self.eos_ids, self._tok_lock)
        self._cv = threading.Condition()
        self._pending: deque[Request] = deque()
        self._groups: list[_Group] = []
        self._commands: deque[_Command] = deque()
        self._policy = Policy()
        self._peft: Any = None
        self._current_adapter: str | None = None
        self._adapter_ids = itertools.count(1)
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
    def queued(self) -> int:
        return len(self._pending)

    @property
    def active(self) -> int:
        """Requests generating now (admitted, not finished)."""
        return sum(1 for g in list(self._groups) for r in list(g.rows) if not r.done)

    # ----- tokenizer (shared by the event loop and the worker) -----------------------

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]:
        with self._tok_lock:
            return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )

    def decode_all(self, ids: list[int]) -> str:
        """Text of token ids with special tokens kept (echoing a prompt given as ids)."""
        with self._tok_lock:
            return self.tokenizer.decode(
                ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )

    def token_text(self, token_id: int) -> str:
        with self._tok_lock:
            return self.tokenizer.decode(
                [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )

    def render_chat(self, messages: Any, tools: list[Any] | None) -> str:
        from metaclaw.serving.chat import render_prompt

        with self._tok_lock:
            return render_prompt(self.tokenizer, messages, tools)

    # ----- requests ------------------------------------------------------------------

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

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, *, stream: bool, timeout_s: float
    ) -> Request:
        """Queue a generation (call from the event loop); raises EngineError 503 when full."""
        req = Request(
            prompt_ids=list(prompt_ids),
            params=params,
            stream=stream,
            deadline=time.monotonic() + timeout_s,
            loop=asyncio.get_running_loop(),
        )
        with self._cv:
            if self._closing or not self.alive:
                raise EngineError(
                    503, "policy server is shutting down", "unavailable", "server_error"
                )
            if len(self._pending) >= self.max_queue:
                self.stats.rejected += 1
                raise overloaded(len(self._pending), self.max_queue)
            self._pending.append(req)
            self._cv.notify_all()
        return req

    # ----- adapters ------------------------------------------------------------------

    def validate_adapter(self, path: Path) -> dict[str, Any]:
        """Check a peft LoRA directory fits this model before touching the model."""
        path = Path(path)
        if not path.is_dir():
            raise AdapterError(f"adapter directory {path} does not exist")
        try:
            config = json.loads((path / ADAPTER_CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise AdapterError(
                f"{path / ADAPTER_CONFIG} is missing or not JSON ({exc}); "
                "expected a peft save_pretrained directory"
            ) from None
        if str(config.get("peft_type", "")).upper() != "LORA":
            raise AdapterError(
                f"{path} holds a {config.get('peft_type')!r} adapter; only LoRA adapters are served"
            )
        weights = next((path / w for w in ADAPTER_WEIGHTS if (path / w).is_file()), None)
        if weights is None:
            raise AdapterError(f"{path} has no {' or '.join(ADAPTER_WEIGHTS)}")
        if weights.suffix == ".safetensors":
            self._check_lora_shapes(weights)
        return config

    def _check_lora_shapes(self, weights: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                for part, dim in ((".lora_A.", 1), (".lora_B.", 0)):
                    if part not in key:
                        continue
                    module = key.split(part)[0].removeprefix("base_model.model.")
                    shape = fh.get_slice(key).get_shape()
                    if module not in self._linear_shapes:
                        raise AdapterError(
                            f"adapter tensor {key} targets {module!r}, which this "
                            f"model ({self.name}) does not have: trained for a "
                            "different base model?"
                        )
                    want = self._linear_shapes[module][0 if dim == 1 else 1]
                    if shape[dim] != want:
                        raise AdapterError(
                            f"adapter tensor {key} has shape {shape}, but {module} in "
                            f"{self.name} has {'in' if dim == 1 else 'out'}_features={want}: "
                            "trained for a different base model?"
                        )

    async def swap(self, checkpoint_id: str | None, path: Path | None) -> Policy:
        """Make (checkpoint_id, path) the policy for new requests; None/None = base weights.

        Requests already running keep their weights until they finish; none fails.
        """
        if path is not None:
            await asyncio.to_thread(self.validate_adapter, path)
        return await self._command(lambda: self._swap_now(checkpoint_id, path))

    def swap_blocking(self, checkpoint_id: str | None, path: Path | None) -> Policy:
        """The same as `swap`, for callers without an event loop (startup, benchmarks)."""
        if path is not None:
            self.validate_adapter(path)
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
                raise EngineError(
                    503, "policy server is shutting down", "unavailable", "server_error"
                )
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
            from peft import PeftModel

            name = f"ckpt{next(self._adapter_ids)}"
            if self._peft is None:
                self._peft = PeftModel.from_pretrained(
                    self.model, str(path), adapter_name=name, is_trainable=False
                )
            else:
                try:
                    self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
                except Exception:  # leave no half-registered adapter behind; keep serving
                    if name in self._peft.peft_config and len(self._peft.peft_config) > 1:
                        self._peft.delete_adapter(name)
                        self._current_adapter = None
                    raise
            self._peft.eval()
            self._policy = Policy(checkpoint_id=checkpoint_id, adapter=name, path=str(path))
        self.stats.swaps += 1
        log.info(
            "policy now %s (%s)",
            self._policy.checkpoint_id or "base model",
            self._policy.path or "no adapter",
        )
        return self._policy

    def _drop_unused_adapters(self) -> None:
        """Free adapters no running group uses; peft needs one adapter kept, so keep the last."""
        if self._peft is None:
            return
        in_use = {g.policy.adapter for g in self._groups} | {self._policy.adapter}
        for name in list(self._peft.peft_config):
            if name not in in_use and len(self._peft.peft_config) > 1:
                with warnings.catch_warnings():  # "adapter was active": we set it per pass
                    warnings.simplefilter("ignore", UserWarning)
                    self._peft.delete_adapter(name)
                if self._current_adapter == name:
                    self._current_adapter = None

    @contextlib.contextmanager
    def _weights(self, policy: Policy) -> Iterator[None]:
        if self._peft is None:
            yield
        elif policy.adapter is None:
            with self._peft.disable_adapter():
                yield
        else:
            if self._current_adapter != policy.adapter:
                self._peft.set_adapter(policy.adapter)
                self._current_adapter = policy.adapter
            yield

    # ----- the worker ----------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not (self._closing or self._pending or self._groups or self._commands):
                        self._cv.wait()
                    if self._closing:
                        break
                    commands = list(self._commands)
                    self._commands.clear()
                    admitted = self._admit()
                for cmd in commands:
                    self._run_command(cmd)
                self._prefill_all(admitted)
                for group in list(self._groups):
                    try:
                        self._step(group)
                    except Exception as exc:  # a bug fails this group, never the others
                        log.exception("policy engine step failed")
                        self._fail_group(group, _generation_error(exc))
                try:
                    self._drop_unused_adapters()
                except Exception:  # only memory is at stake; retried next round
                    log.exception("dropping unused adapters failed")
        self._fail_all(
            EngineError(503, "policy server is shutting down", "unavailable", "server_error"),
            include_pending=True,
        )

    def _admit(self) -> list[Request]:
        now = time.monotonic()
        for req in [r for r in self._pending if r.cancelled or r.deadline <= now]:
            self._pending.remove(req)
            self._finish_dropped(req, now)
        room = self.max_batch - self.active
        admitted = []
        while self._pending and room > 0:
            admitted.append(self._pending.popleft())
            room -= 1
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
        scored = [r for r in admitted if r.params.prompt_logprobs]
        for batch in ([plain] if plain else []) + [[r] for r in scored]:
            try:
                self._prefill(batch)
            except Exception as exc:
                log.exception("prefill failed")
                for req in batch:
                    self._fail(req, _generation_error(exc))
                for group in [g for g in self._groups if any(r in batch for r in g.rows)]:
                    self._prune(group)

    def _prefill(self, rows: list[Request]) -> None:
        policy = self._policy
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, req in enumerate(rows):
            n = len(req.prompt_ids)
            ids[i, width - n :] = torch.tensor(req.prompt_ids, dtype=torch.long)
            mask[i, width - n :] = 1
            req.policy = policy
            req.generator = _generator(req.params.seed)
            req.tracker = TextTracker(self.decode, req.params.stop, req.params.detect_tools)
            self.stats.prompt_tokens += n
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        full = any(r.params.prompt_logprobs for r in rows)
        with self._weights(policy):
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
            with self._weights(group.policy):
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
        req.completion_ids.append(token)
        req.logprobs.append(logprob)
        req.top.append(top)
        self.stats.tokens_generated += 1
        assert req.tracker is not None
        if token in self.eos_ids and not req.params.ignore_eos:
            text, finish = "", "stop"
        else:
            text = req.tracker.push(token)
            finish = "stop" if req.tracker.stopped_by is not None else None
        if finish is None and len(req.completion_ids) >= req.params.max_tokens:
            finish = "length"
        if req.stream:
            req._send(Delta(text=text, token_id=token, logprob=logprob, top=top))
        if finish is not None:
            self._complete(req, finish)

    def _complete(self, req: Request, finish: str) -> None:
        assert req.tracker is not None and req.policy is not None
        tail = req.tracker.flush()
        if req.stream and tail:
            req._send(Delta(text=tail, token_id=None, logprob=None, top=[]))
        text, calls = req.tracker.text, []
        if req.params.detect_tools:
            text, calls = split_tool_calls(text)
            if calls:
                finish = "tool_calls"
        req.done = True
        self.stats.completed += 1
        req._send(
            Result(
                prompt_ids=req.prompt_ids,
                completion_ids=req.completion_ids,
                completion_logprobs=req.logprobs,
                completion_top=req.top,
                prompt_logprobs=req.prompt_logprobs,
                prompt_top=req.prompt_top,
                text=text,
                tool_calls=calls,
                finish_reason=finish,
                checkpoint=req.policy.checkpoint_id,
                temperature=req.params.temperature,
            )
        )

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
                while self._pending:
                    self._fail(self._pending.popleft(), err)
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


def _generator(seed: int | None) -> torch.Generator:
    gen = torch.Generator()
    gen.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    return gen


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def _linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every Linear and Embedding (LoRA targets)."""
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[name] = (module.in_features, module.out_features)
        elif isinstance(module, torch.nn.Embedding):
            shapes[name] = (module.num_embeddings, module.embedding_dim)
    return shapes
