"""`LocalBackend`: the training protocol on transformers + peft, on CPU (or a GPU when present).

Why it exists: CI and offline users have no Tinker account, yet the train flow must be exercised
for real. This backend reproduces Tinker's semantics (see `backend.py`) on a Hugging Face causal
LM with a LoRA adapter on every attention and MLP projection, so a flow tested here behaves the
same on Tinker Cloud.

A checkpoint is one directory, `<checkpoint_dir>/<name>/`, in peft `save_pretrained` format
(`adapter_config.json` + `adapter_model.safetensors`, loadable by peft, vLLM and llama.cpp's
LoRA converter) plus `optimizer.pt` (AdamW moments) and `trainer_state.json`, so the same path is
both the sampler weights and the exact-resume state. Directories are written under a temporary
name and renamed into place: a crash mid-save never leaves a half checkpoint under a real name.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tinker import types

from metaclaw.models.decoding import left_padded, seeded_generator
from metaclaw.training.losses import check_inputs, loss_sum

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
ADAPTER_FILE = "adapter_model.safetensors"
DEFAULT_MAX_TOKENS = 512


def _device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """Files, then the directory entry: the checkpoint survives a power cut once renamed."""
    for file in path.iterdir():
        if file.is_file():
            _fsync_path(file)
    _fsync_path(path)


def _first_loss_position(datum: types.Datum) -> int:
    """The first target position any loss input (weights, advantages, sampler logprobs) is
    non-zero at; every loss in metaclaw.training.losses is zero before it."""
    inputs = [v.to_torch() for k, v in datum.loss_fn_inputs.items() if k != "target_tokens"]
    nonzero = [
        int(t.reshape(t.shape[0], -1).ne(0).any(-1).nonzero()[0]) for t in inputs if t.ne(0).any()
    ]
    return min(nonzero, default=datum.model_input.length)


def _score(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) = logit(target) − logsumexp(logits), without a full log-softmax tensor."""
    logits = head(hidden).float()
    norm = torch.logsumexp(logits, dim=-1, keepdim=True)
    picked = logits.gather(-1, targets[:, None] if targets.dim() == 1 else targets) - norm
    return picked.squeeze(-1) if targets.dim() == 1 else picked


class LocalBackend:
    """A LoRA training run on a local Hugging Face model.

    `model` is a model directory, or an already built `PreTrainedModel` (then `tokenizer` is
    required); a built model is wrapped with LoRA *in place*.
    """

    name = "local"

    def __init__(
        self,
        model: str | Path | Any,
        tokenizer: Any | None = None,
        *,
        checkpoint_dir: Path,
        base_model: str | None = None,
        lora_rank: int = 32,
        lora_alpha: int = 32,
        seed: int = 0,
        device: str = "auto",
        dtype: torch.dtype = torch.float32,
        forward_chunk: int = 8,
    ) -> None:
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = _device(device)
        if isinstance(model, str | Path):
            model_dir = Path(model)
            if not (model_dir / "config.json").exists():
                raise FileNotFoundError(
                    f"{model_dir} is not a Hugging Face model directory (no config.json); set "
                    "training.base_model to a local model directory"
                )
            self.base_model = base_model or str(model_dir)
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
            model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        else:
            if tokenizer is None:
                raise ValueError("LocalBackend(model=<built model>) also needs tokenizer=")
            self.base_model = base_model or getattr(model.config, "name_or_path", "") or "local"
        self.tokenizer = tokenizer
        self.checkpoint_dir = Path(checkpoint_dir)
        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.forward_chunk = max(1, forward_chunk)
        torch.manual_seed(seed)  # LoRA A matrices; B starts at zero, so step 0 == base model
        config = LoraConfig(
            r=lora_rank,
            lora_alpha=lora_alpha,
            lora_dropout=0.0,
            target_modules="all-linear",  # every attention and MLP projection, not lm_head
            bias="none",
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(model, config).to(self.device)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=1e-4, betas=(0.9, 0.95), eps=1e-12, weight_decay=0.0, foreach=False
        )
        self.step = 0
        self._sample_counter = 0

    # -- forward / backward ---------------------------------------------------------------
    def _target_logprobs(self, data: Sequence[types.Datum]) -> list[torch.Tensor]:
        """Learner log-probabilities of each datum's targets, shape (N,) or (N, K).

        The unembedding and the vocabulary log-normaliser run only on real positions (never on
        padding), and positions before the first one that carries a loss input (the prompt)
        run without autograd: the (positions × vocabulary) logits, the largest tensors of a
        step, are kept for the backward pass only over the span the loss reads. Every target
        still gets its logprob (the backend contract)."""
        lengths = [d.model_input.length for d in data]
        if min(lengths) < 1:
            raise ValueError("a datum has an empty model_input")
        width = max(lengths)
        ids = torch.zeros((len(data), width), dtype=torch.long)
        mask = torch.zeros((len(data), width), dtype=torch.long)
        for i, d in enumerate(data):
            ids[i, : lengths[i]] = torch.tensor(d.model_input.to_ints(), dtype=torch.long)
            mask[i, : lengths[i]] = 1
        base: Any = self.model.get_base_model()  # nn.Module's __getattr__ hides its methods
        hidden = base.get_decoder()(
            input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
        ).last_hidden_state
        head = base.get_output_embeddings()
        out = []
        for i, d in enumerate(data):
            targets = d.loss_fn_inputs["target_tokens"].to_torch().long().to(self.device)
            if targets.shape[0] != lengths[i]:
                raise ValueError(
                    f"datum {i}: target_tokens has {targets.shape[0]} positions for a "
                    f"model_input of {lengths[i]} tokens (targets must be full[1:])"
                )
            start = _first_loss_position(d)
            rows = hidden[i, : lengths[i]]
            with torch.no_grad():
                before = _score(head, rows[:start], targets[:start])
            out.append(torch.cat([before, _score(head, rows[start:], targets[start:])]))
        return out

    def _inputs(self, datum: types.Datum) -> dict[str, torch.Tensor]:
        return {
            k: v.to_torch().to(self.device).float()
            for k, v in datum.loss_fn_inputs.items()
            if k != "target_tokens"
        }

    def _run(
        self,
        data: list[types.Datum],
        loss_fn: str,
        config: Mapping[str, float | str] | None,
        backward: bool,
    ) -> types.ForwardBackwardOutput:
        if not data:
            raise ValueError("forward_backward needs at least one datum")
        for d in data:
            check_inputs(loss_fn, d.loss_fn_inputs)
        outputs: list[dict[str, types.TensorData]] = []
        total = 0.0
        for start in range(0, len(data), self.forward_chunk):
            chunk = data[start : start + self.forward_chunk]
            with torch.set_grad_enabled(backward):
                lps = self._target_logprobs(chunk)
                losses = [
                    loss_sum(loss_fn, lp, self._inputs(d), config)
                    for lp, d in zip(lps, chunk, strict=True)
                ]
                loss = torch.stack(losses).sum()
                if backward and loss.requires_grad:  # no loss input anywhere: no gradient
                    loss.backward()  # .grad accumulates until optim_step, as on Tinker
            total += float(loss.detach())
            outputs.extend(
                {"logprobs": types.TensorData.from_torch(lp.detach().float().cpu())} for lp in lps
            )
        return types.ForwardBackwardOutput(
            loss_fn_output_type="logprobs", loss_fn_outputs=outputs, metrics={"loss:sum": total}
        )

    def forward_backward(
        self,
        data: list[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> types.ForwardBackwardOutput:
        self.model.train()
        return self._run(data, loss_fn, loss_fn_config, backward=True)

    def forward(
        self,
        data: list[types.Datum],
        loss_fn: str,
        loss_fn_config: Mapping[str, float | str] | None = None,
    ) -> types.ForwardBackwardOutput:
        return self._run(data, loss_fn, loss_fn_config, backward=False)

    def optim_step(self, adam: types.AdamParams) -> types.OptimStepResponse:
        for group in self.optimizer.param_groups:
            group["lr"] = adam.learning_rate
            group["betas"] = (adam.beta1, adam.beta2)
            group["eps"] = adam.eps
            group["weight_decay"] = adam.weight_decay
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = (
            float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
            if grads
            else 0.0
        )
        if adam.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, adam.grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return types.OptimStepResponse(metrics={"grad_norm:mean": norm})

    # -- sampling -------------------------------------------------------------------------
    def _stop_ids(self, stop: Any) -> tuple[set[int], list[str]]:
        if stop is None:
            eos = self.model.generation_config.eos_token_id
            if eos is None:
                eos = self.tokenizer.eos_token_id
            ids = set(eos if isinstance(eos, list) else [eos]) - {None}
            return ids, []
        if isinstance(stop, str):
            return set(), [stop]
        stop = list(stop)
        if all(isinstance(s, int) for s in stop):
            return set(stop), []
        return set(), [str(s) for s in stop]

    def sample(
        self, prompt: types.ModelInput, num_samples: int, params: types.SamplingParams
    ) -> types.SampleResponse:
        return self.sample_batch([(prompt, num_samples, params)])[0]

    @torch.no_grad()
    def sample_batch(
        self, requests: Sequence[tuple[types.ModelInput, int, types.SamplingParams]]
    ) -> list[types.SampleResponse]:
        """Ancestral sampling with a KV cache, every request's samples decoded as one batch
        (prompts left-padded): the gate's evaluation set costs one decode per token position,
        not one per prompt. Each request keeps its own generator, seeded from its params, so
        the same request draws the same way whichever batch it shares (common random numbers
        hold as long as both policies are sampled alike). Logprobs are of the distribution
        sampled from (logits / T, after top-k/top-p), which is what importance sampling
        divides by."""
        members: list[range] = []  # each request's rows of the batch
        for _, n, _ in requests:
            start = members[-1].stop if members else 0
            members.append(range(start, start + n))
        rows = members[-1].stop if members else 0
        if rows == 0:
            return [types.SampleResponse(sequences=[]) for _ in requests]
        self.model.eval()
        stops = [self._stop_ids(params.stop) for _, _, params in requests]
        limits = [params.max_tokens or DEFAULT_MAX_TOKENS for _, _, params in requests]
        generators = [seeded_generator(params.seed, self.device) for _, _, params in requests]
        pad = self.tokenizer.pad_token_id
        ids, mask, positions = (
            t.to(self.device)
            for t in left_padded(
                [prompt.to_ints() for prompt, n, _ in requests for _ in range(n)],
                self.tokenizer.eos_token_id if pad is None else pad,
            )
        )
        tokens: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        reasons = ["length"] * rows
        done = [False] * rows
        cache = None
        step_input, step_positions = ids, positions
        for position in range(max(limits)):
            out = self.model(
                input_ids=step_input,
                attention_mask=mask,
                position_ids=step_positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = out.cache
            logits = out.logits[:, -1, :].float()
            chosen = torch.zeros(rows, dtype=torch.long, device=self.device)
            for j, (_, _, params) in enumerate(requests):
                if not members[j]:
                    continue
                stop_ids, stop_strings = stops[j]
                rows_j = torch.tensor(list(members[j]), device=self.device)
                picked, picked_lp = self._draw(logits[rows_j], params, generators[j])
                chosen[rows_j] = picked
                for i, tok, lp in zip(members[j], picked.tolist(), picked_lp.tolist(), strict=True):
                    if done[i]:
                        continue
                    tokens[i].append(tok)
                    logprobs[i].append(lp)
                    if tok in stop_ids or (stop_strings and self._hit(tokens[i], stop_strings)):
                        done[i], reasons[i] = True, "stop"
                    elif position + 1 >= limits[j]:
                        done[i] = True
            if all(done):
                break
            step_input = chosen[:, None]
            mask = torch.cat([mask, mask.new_ones((rows, 1))], dim=1)
            step_positions = step_positions[:, -1:] + 1
        self.model.train()
        responses = []
        for j in range(len(requests)):
            sequences = []
            for i in members[j]:
                self._sample_counter += 1
                sequences.append(
                    types.SampledSequence(
                        stop_reason=reasons[i],  # type: ignore[arg-type]
                        sequence_id=f"local-{self._sample_counter}",
                        _tokens_list=tokens[i],
                        _logprobs_list=logprobs[i],
                    )
                )
            responses.append(types.SampleResponse(sequences=sequences))
        return responses

    @staticmethod
    def _draw(
        logits: torch.Tensor, params: types.SamplingParams, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if params.temperature <= 0:  # greedy; report the untempered logprob
            logp = torch.log_softmax(logits, dim=-1)
            chosen = logp.argmax(dim=-1)
            return chosen, logp.gather(-1, chosen[:, None]).squeeze(-1)
        scores = logits / params.temperature
        if params.top_k and params.top_k > 0:
            kth = torch.topk(scores, min(params.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if params.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
            cum = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
            drop = cum - torch.softmax(sorted_scores, dim=-1) >= params.top_p
            sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
            scores = torch.full_like(scores, float("-inf")).scatter(-1, order, sorted_scores)
        logp = torch.log_softmax(scores, dim=-1)
        chosen = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        return chosen, logp.gather(-1, chosen[:, None]).squeeze(-1)

    def _hit(self, tokens: list[int], stop_strings: list[str]) -> bool:
        text = self.tokenizer.decode(tokens[-16:], skip_special_tokens=False)
        return any(s in text for s in stop_strings)

    # -- checkpoints ----------------------------------------------------------------------
    def _write_dir(self, name: str, with_optimizer: bool) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"checkpoint name {name!r} must be a plain directory name")
        final = self.checkpoint_dir / name
        tmp = self.checkpoint_dir / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        tmp.mkdir(parents=True)
        try:
            self.model.save_pretrained(str(tmp))  # adapter_config.json + adapter_model.safetensors
            if with_optimizer:
                torch.save(self.optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            (tmp / STATE_FILE).write_text(
                json.dumps(
                    {
                        "format": 1,
                        "step": self.step,
                        "base_model": self.base_model,
                        "lora_rank": self.lora_rank,
                        "lora_alpha": self.lora_alpha,
                        "has_optimizer": with_optimizer,
                    },
                    indent=2,
                )
            )
            _fsync_tree(tmp)
            trash = None
            if final.exists():
                trash = self.checkpoint_dir / f".{name}.old-{uuid.uuid4().hex[:6]}"
                os.replace(final, trash)
            os.replace(tmp, final)
            _fsync_path(self.checkpoint_dir)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def save_state(self, name: str) -> str:
        return str(self._write_dir(name, with_optimizer=True))

    def save_weights_for_sampler(self, name: str) -> str:
        """The adapter directory; reuses a `save_state` directory of the same step."""
        final = self.checkpoint_dir / name
        state = final / STATE_FILE
        if state.exists() and json.loads(state.read_text()).get("step") == self.step:
            return str(final)
        return str(self._write_dir(name, with_optimizer=False))

    def load_state(self, path: str) -> None:
        """Restore adapter weights, AdamW moments and the step count; drop pending gradients."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        directory = Path(path)
        state_file = directory / STATE_FILE
        if not (directory / ADAPTER_FILE).exists() or not state_file.exists():
            raise FileNotFoundError(f"{directory} is not a LocalBackend checkpoint directory")
        state = json.loads(state_file.read_text())
        if state.get("lora_rank") != self.lora_rank:
            raise ValueError(
                f"checkpoint {directory} has LoRA rank {state.get('lora_rank')}, this run "
                f"uses {self.lora_rank}; set training.lora_rank to match or start fresh"
            )
        weights = load_file(directory / ADAPTER_FILE, device=str(self.device))
        result = set_peft_model_state_dict(self.model, weights)
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"checkpoint {directory} does not fit this model: {unexpected[:3]}")
        if (directory / OPTIMIZER_FILE).exists():
            opt_state = torch.load(
                directory / OPTIMIZER_FILE, map_location=self.device, weights_only=True
            )
            self.optimizer.load_state_dict(opt_state)
        else:
            log.warning("%s has no optimizer state; AdamW restarts from zero moments", directory)
        self.optimizer.zero_grad(set_to_none=True)
        self.step = int(state.get("step", 0))

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def close(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
