"""LocalBackend training speed, and the latency from a rewarded turn to a saved candidate.

    .venv/bin/python bench/train_step.py                 # tiny model + the packaged SmolLM2
    .venv/bin/python bench/train_step.py --quick         # tiny model only, fewer steps
    .venv/bin/python bench/train_step.py --threads 2 --steps 5 --json out.json

Part 1, step time: one micro-batch of `--batch` sequences × `--seq-len` tokens (prompt 64,
completion the rest, random token ids) through `forward_backward(importance_sampling)` +
`optim_step(AdamW)`, the exact work of one training step; one warm-up step, then the median of
`--steps`. tokens/s counts every token of the micro-batch. Models: the tiny random Qwen2 of the
tests (tests/tiny_model.py) and, unless --quick, SmolLM2-135M-Instruct from the packaged GGUF
(`metaclaw.models.resolve_model_dir`, converted once into `--home`/models).

Part 2, rewarded turn → candidate: a temporary ledger holds `batch-1` rewarded on-policy turns
and one more turn without a reward; the clock starts when that turn's explicit feedback is
appended (the moment a micro-batch becomes ready) and stops when the `checkpoints` candidate row
is readable. It is one `Trainer.step()` as a fresh train-flow run does it: ledger reads, model
load, the step, the post-update check, checkpoint save, ledger writes. Deployed, the train
schedule adds up to `flows.train_interval_s` of waiting before the run starts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from tinker import types

from bench._common import (
    OtherLoad,
    load_warning,
    machine_summary,
    median,
    print_table,
    proc_cpu_seconds,
    write_json,
)
from metaclaw.config import Settings
from metaclaw.ledger import append_rows
from metaclaw.ledger.records import now_micros
from metaclaw.training.datums import rl_datum
from metaclaw.training.local import LocalBackend
from metaclaw.training.trainer import Trainer
from tests.tiny_model import save_tiny_model

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
PROMPT_LEN = 64


def micro_batch(vocab: int, batch: int, seq_len: int, seed: int = 0) -> list[types.Datum]:
    rng = random.Random(seed)
    out = []
    for i in range(batch):
        prompt = [rng.randrange(3, vocab) for _ in range(PROMPT_LEN)]
        completion = [rng.randrange(3, vocab) for _ in range(seq_len - PROMPT_LEN)]
        logprobs = [-rng.uniform(0.5, 8.0) for _ in completion]
        out.append(rl_datum(prompt, completion, logprobs, 1.0 if i % 2 else -1.0))
    return out


def step_time(
    model_dir: Path, label: str, batch: int, seq_len: int, steps: int, rank: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="metaclaw-bench-train-") as tmp:
        t0 = time.perf_counter()
        backend = LocalBackend(model_dir, checkpoint_dir=Path(tmp), lora_rank=rank)
        load_s = time.perf_counter() - t0
        data = micro_batch(len(backend.tokenizer), batch, seq_len)
        adam = types.AdamParams(learning_rate=1e-6)
        times = []
        load = OtherLoad()
        cpu0 = proc_cpu_seconds(os.getpid())
        for i in range(steps + 1):
            t = time.perf_counter()
            backend.forward_backward(data, "importance_sampling")
            backend.optim_step(adam)
            if i:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - t)
        other = load.cores(proc_cpu_seconds(os.getpid()) - cpu0)
        t = time.perf_counter()
        path = Path(backend.save_state("bench"))
        save_s = time.perf_counter() - t
        adapter_mb = (path / "adapter_model.safetensors").stat().st_size / 1e6
        params = sum(p.numel() for p in backend.model.parameters())
        trainable = sum(p.numel() for p in backend.params)
    med = median(times)
    return {
        "model": label,
        "params": params,
        "lora_params": trainable,
        "load_s": load_s,
        "step_s": med,
        "step_min_s": min(times),
        "tokens_per_s": batch * seq_len / med,
        "save_s": save_s,
        "adapter_mb": adapter_mb,
        "other_load_cores": other,
        "steps": len(times),
    }


def turn_to_candidate(model_dir: Path, label: str, batch: int, rank: int) -> dict[str, Any]:
    """Seconds from the feedback that completes a micro-batch to a readable candidate row."""
    with tempfile.TemporaryDirectory(prefix="metaclaw-bench-t2c-") as tmp:
        home = Path(tmp)
        settings = Settings(
            home=home,
            deploy={"eval_fraction": 0.0},  # all 8 turns train
            training={
                "base_model": str(model_dir),
                "lora_rank": rank,
                "batch_size": batch,
                "learning_rate": 1e-5,
            },
        )
        sampler = LocalBackend(model_dir, checkpoint_dir=home / "sampler", lora_rank=rank)
        tok = sampler.tokenizer
        turns, feedback = [], []
        for i in range(batch):
            prompt = tok.apply_chat_template(
                [{"role": "user", "content": f"Question number {i}: what is {i} + {i}?"}],
                add_generation_prompt=True,
                tokenize=False,
            )
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            seq = sampler.sample(
                types.ModelInput.from_ints(ids), 1, types.SamplingParams(max_tokens=32, seed=i)
            ).sequences[0]
            ts = now_micros()
            tid = uuid.uuid4().hex
            turns.append(
                {
                    "turn_id": tid,
                    "session_id": f"s{i}",
                    "ts_start": ts,
                    "ts_end": ts,
                    "status": "ok",
                    "served_by": "policy",
                    "source": "live",
                    "request": json.dumps({"messages": []}),
                    "prompt_token_ids": ids,
                    "completion_token_ids": seq.tokens,
                    "completion_logprobs": seq.logprobs,
                }
            )
            feedback.append(
                {
                    "feedback_id": uuid.uuid4().hex,
                    "turn_id": tid,
                    "value": 1.0 if i % 2 else -0.5,
                    "ts": ts + 1,
                }
            )
        del sampler
        append_rows(settings.paths.wal, "turns", turns)
        append_rows(settings.paths.wal, "feedback", feedback[:-1])
        start = time.perf_counter()
        append_rows(settings.paths.wal, "feedback", feedback[-1:])  # the micro-batch is ready
        trainer = Trainer(settings)
        outcome = trainer.step()
        from metaclaw.ledger import query

        _, found = query(
            settings.paths, "SELECT checkpoint_id FROM checkpoints WHERE status = 'candidate'"
        )
        total = time.perf_counter() - start
        trainer.close()
        if outcome.status != "trained" or not found:
            raise RuntimeError(f"no candidate: {outcome.status} {outcome.reason}")
    return {
        "model": label,
        "turn_to_candidate_s": total,
        "step_time_s": outcome.metrics.get("step_time_s"),
        "tokens": outcome.metrics.get("tokens"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--home",
        type=Path,
        default=Path(tempfile.gettempdir()) / "metaclaw-bench-home",
        help="where the converted SmolLM2 is cached",
    )
    parser.add_argument("--quick", action="store_true", help="tiny model only, 2 steps")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = 2 if args.quick else args.steps
    print(
        f"machine: {machine_summary()}; torch threads {torch.get_num_threads()}; "
        f"device {'cuda' if torch.cuda.is_available() else 'cpu'}"
    )
    warning = load_warning()
    if warning:
        print(warning)

    models: list[tuple[str, Path]] = []
    tiny_dir = Path(tempfile.mkdtemp(prefix="metaclaw-bench-tiny-"))
    models.append(("tiny-qwen2 (random, 2 layers)", save_tiny_model(tiny_dir)))
    smollm_note = "skipped (--quick)"
    if not args.quick:
        try:
            from metaclaw.models import resolve_model_dir

            t = time.perf_counter()
            smol = resolve_model_dir(SMOLLM2, args.home, notify=print)
            smollm_note = f"resolved in {time.perf_counter() - t:.1f} s at {smol}"
            models.append(("SmolLM2-135M-Instruct fp32", smol))
        except Exception as exc:  # report, and still measure the tiny model
            smollm_note = f"unavailable: {type(exc).__name__}: {exc}"
    print(f"SmolLM2: {smollm_note}")

    speed = [step_time(d, label, args.batch, args.seq_len, steps, args.rank) for label, d in models]
    print(
        f"\nstep: forward_backward(importance_sampling) + optim_step, micro-batch "
        f"{args.batch} × {args.seq_len} tokens, LoRA rank {args.rank}"
    )
    print_table(
        [
            "model",
            "LoRA params",
            "load s",
            "step s (median)",
            "tokens/s",
            "save s",
            "adapter MB",
            "other load (cores)",
        ],
        [
            [
                r["model"],
                r["lora_params"],
                r["load_s"],
                r["step_s"],
                r["tokens_per_s"],
                r["save_s"],
                r["adapter_mb"],
                r["other_load_cores"],
            ]
            for r in speed
        ],
        digits=3,
    )

    latency = [turn_to_candidate(d, label, args.batch, args.rank) for label, d in models]
    print(f"\nrewarded turn → candidate checkpoint (one train-flow step, batch {args.batch})")
    print_table(
        ["model", "turn→candidate s", "of which fwd/bwd+optim s", "tokens"],
        [[r["model"], r["turn_to_candidate_s"], r["step_time_s"], r["tokens"]] for r in latency],
        digits=3,
    )
    if args.json:
        write_json(
            args.json,
            {
                "machine": machine_summary(),
                "threads": args.threads,
                "smollm2": smollm_note,
                "step": speed,
                "latency": latency,
            },
        )


if __name__ == "__main__":
    main()
