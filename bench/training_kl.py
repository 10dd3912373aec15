"""Sampler→learner KL of a healthy run, and its growth with staleness (sets training.max_kl).

    .venv/bin/python bench/training_kl.py                  # tiny model + the packaged SmolLM2
    .venv/bin/python bench/training_kl.py --quick          # tiny model only

A healthy run: the promoted policy P serves a batch; the learner takes `--steps` PPO steps at
the default `training.*` settings (LoRA rank, learning rate, AdamW), each on a fresh batch it
sampled itself (staleness 0), rewarded by a fixed rule (shorter completions are better, so the
update is real). Per step it prints the trainer's guard values — `max(|kl v1|, kl v2)` on the
step's own batch before the update (≈ 0: same weights) and after it (the step size) — and, on
P's batch, the KL of a learner k steps ahead of P (staleness k: what the guard sees on turns
the promoted policy served while the learner accumulates unpromoted steps). Also the step time
of the completion-span unembedding (metaclaw.training.local) against the full-sequence one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from tinker import types

from metaclaw.config import Settings
from metaclaw.training.backend import learner_logprobs
from metaclaw.training.datums import completion_span, rl_datum
from metaclaw.training.local import LocalBackend
from metaclaw.training.losses import sampler_learner_kl

PROMPTS = [
    "What is the capital of France?",
    "Say hello.",
    "Name a colour.",
    "What is 2 + 2?",
    "Give me a fruit.",
    "How are you today?",
    "Write one word.",
    "What is the sky's colour?",
]


def guard(kl: tuple[float, float]) -> float:
    return max(abs(kl[0]), kl[1])


def batch(
    backend: LocalBackend, tok: Any, max_tokens: int, seed: int, turns: int
) -> list[dict[str, Any]]:
    out = []
    for i, text in enumerate(PROMPTS[:turns]):
        rendered = tok.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
        )
        prompt = list(tok(rendered, add_special_tokens=False)["input_ids"])
        seq = backend.sample(
            types.ModelInput.from_ints(prompt),
            1,
            types.SamplingParams(max_tokens=max_tokens, seed=seed * 100 + i, temperature=1.0),
        ).sequences[0]
        out.append(
            {"prompt": prompt, "completion": list(seq.tokens), "q": list(seq.logprobs or [])}
        )
    lengths = sorted(len(s["completion"]) for s in out)
    median = lengths[len(lengths) // 2]
    for s in out:
        s["reward"] = 1.0 if len(s["completion"]) < median else -1.0
    return out


def kl_on(backend: LocalBackend, samples: list[dict[str, Any]]) -> tuple[float, float]:
    data = [rl_datum(s["prompt"], s["completion"], s["q"], s["reward"]) for s in samples]
    sampler: list[float] = []
    learner: list[float] = []
    for s, lps in zip(samples, learner_logprobs(backend.forward(data, "ppo")), strict=True):
        sampler += s["q"]
        learner += lps[completion_span(len(s["prompt"]), len(s["completion"]))]
    return sampler_learner_kl(sampler, learner)


def run(name: str, model_dir: Path, steps: int, max_tokens: int, turns: int) -> None:
    cfg = Settings().training
    adam = types.AdamParams(
        learning_rate=cfg.learning_rate,
        beta1=cfg.adam_beta1,
        beta2=cfg.adam_beta2,
        eps=cfg.adam_eps,
    )
    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(
            model_dir,
            checkpoint_dir=Path(tmp),
            lora_rank=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            device="cpu",
        )
        tok = backend.get_tokenizer()
        served = batch(backend, tok, max_tokens, 0, turns)  # P's turns
        print(
            f"\n{name}: lr {cfg.learning_rate}, LoRA rank {cfg.lora_rank}, {cfg.loss_fn}, "
            f"{turns} turns/step, ≤{max_tokens} tokens each"
        )
        print("step  guard before  guard after  P's turns at staleness k  step s")
        for k in range(1, steps + 1):
            own = batch(backend, tok, max_tokens, k, turns)
            data = [rl_datum(s["prompt"], s["completion"], s["q"], s["reward"]) for s in own]
            before = guard(kl_on(backend, own))
            t0 = time.perf_counter()
            backend.forward_backward(data, cfg.loss_fn)
            backend.optim_step(adam)
            elapsed = time.perf_counter() - t0
            after = guard(kl_on(backend, own))
            stale = guard(kl_on(backend, served))
            print(f"{k:>4}  {before:12.2e}  {after:11.2e}  {stale:24.2e}  {elapsed:6.2f}")


def full_sequence_logprobs(backend: LocalBackend, data: list[types.Datum]) -> torch.Tensor:
    """The previous unembedding, as the baseline: lm_head + log_softmax over every position of
    the padded batch, all under autograd."""
    lengths = [d.model_input.length for d in data]
    ids = torch.zeros((len(data), max(lengths)), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, d in enumerate(data):
        ids[i, : lengths[i]] = torch.tensor(d.model_input.to_ints())
        mask[i, : lengths[i]] = 1
    logp = torch.log_softmax(backend.model(input_ids=ids, attention_mask=mask).logits.float(), -1)
    rows = [
        logp[i, : lengths[i]]
        .gather(-1, d.loss_fn_inputs["target_tokens"].to_torch().long()[:, None])
        .squeeze(-1)
        for i, d in enumerate(data)
    ]
    return torch.cat(rows)


def unembedding(
    name: str, model_dir: Path, prompt_len: int, completion_len: int, n: int = 8, repeats: int = 3
) -> None:
    """forward_backward time: completion-span unembedding vs the full-sequence baseline."""
    with tempfile.TemporaryDirectory() as tmp:
        backend = LocalBackend(model_dir, checkpoint_dir=Path(tmp), lora_rank=8, device="cpu")
        vocab = backend.model.get_base_model().get_output_embeddings().weight.shape[0]
        gen = torch.Generator().manual_seed(0)
        data = []
        for i in range(n):  # ragged lengths: padding is part of the old cost
            p = prompt_len - 16 * i
            toks = torch.randint(0, vocab, (p + completion_len,), generator=gen).tolist()
            data.append(rl_datum(toks[:p], toks[p:], [-1.0] * completion_len, 1.0))

        def new() -> None:
            backend.forward_backward(data, "importance_sampling")
            backend.optimizer.zero_grad(set_to_none=True)

        def old() -> None:
            full_sequence_logprobs(backend, data).sum().backward()
            backend.optimizer.zero_grad(set_to_none=True)

        times = {}
        for label, fn in (("full sequence (old)", old), ("completion span (new)", new)):
            fn()
            started = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[label] = (time.perf_counter() - started) / repeats
        width = prompt_len + completion_len - 1
        print(
            f"\n{name}: {n} datums, prompts {prompt_len - 16 * (n - 1)}–{prompt_len} + "
            f"{completion_len} completion tokens, vocabulary {vocab}"
        )
        print(
            f"  logits under autograd: old {n * width * vocab / 1e6:.1f} M floats, "
            f"new {n * completion_len * vocab / 1e6:.1f} M"
        )
        for label, t in times.items():
            print(f"  forward_backward {label}: {t:.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model only")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--turns", type=int, default=len(PROMPTS), help="turns per step")
    parser.add_argument("--skip", choices=["kl", "unembedding"], help="leave one part out")
    parser.add_argument("--home", default=".metaclaw", help="where SmolLM2 is converted once")
    args = parser.parse_args()
    torch.manual_seed(0)
    from tests.tiny_model import save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tiny = save_tiny_model(Path(tmp) / "tiny")
        models = [("tiny Qwen2 (tests/tiny_model.py)", tiny)]
        if not args.quick:
            from metaclaw.models import resolve_model_dir

            models.append(
                (
                    "SmolLM2-135M-Instruct",
                    Path(resolve_model_dir("HuggingFaceTB/SmolLM2-135M-Instruct", Path(args.home))),
                )
            )
        if args.skip != "unembedding":
            for name, path in models:
                unembedding(
                    name, path, 512 if path == tiny else 256, 32, n=8 if path == tiny else 4
                )
        if args.skip != "kl":
            for name, path in models:
                run(name, path, args.steps, args.max_tokens, args.turns)


if __name__ == "__main__":
    main()
