"""The gate's sampling: its prompts one at a time against one left-padded batch, on real parts.

    .venv/bin/python bench/gate_sampling.py                  # the embedded model, 24 prompts
    .venv/bin/python bench/gate_sampling.py --max-tokens 32 --json out.json

Why: on this machine the gate of `bench/learning.py` spent 5.3 minutes of a 21-minute round
sampling 24 greedy replies per policy one prompt at a time (docs/learning.md); freshness (first
feedback → a promoted checkpoint) is bounded by it. `BackendSampler.sample_many` now hands the
chunk to `LocalBackend.sample_batch`. Both ways run here in the same process on the same model
(the embedded SmolLM2-135M by default, converted once, as the gate loads it) and the teaching
questions as chat prompts; reported: seconds each way, the ratio, and whether every reply is the
same token for token (greedy, so it must be, up to float ties).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench`, `tests` and `metaclaw` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from bench._common import (
    add_wait_idle,
    git_revision,
    load_warning,
    machine_summary,
    print_table,
    settle,
    write_json,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--base-model", default=None, help="An HF model directory.")
    parser.add_argument("--json", default=None)
    add_wait_idle(parser)
    args = parser.parse_args()

    import torch
    from tinker import types

    from metaclaw.config import Settings
    from metaclaw.deploy.evaluate import SAMPLE_BATCH
    from metaclaw.learning.preferences import TEACHING_QUESTIONS
    from metaclaw.models.resolve import resolve_model_dir
    from metaclaw.training.local import LocalBackend

    settings = Settings()
    with tempfile.TemporaryDirectory(prefix="metaclaw-gate-sampling-") as tmp:
        model_dir = args.base_model or resolve_model_dir(
            settings.training.base_model, Path(tmp), notify=print
        )
        backend = LocalBackend(model_dir, checkpoint_dir=Path(tmp) / "ckpt", lora_rank=8)
        tok = backend.tokenizer
        questions = (TEACHING_QUESTIONS * (args.prompts // len(TEACHING_QUESTIONS) + 1))[
            : args.prompts
        ]
        prompts = [
            types.ModelInput.from_ints(
                tok(
                    tok.apply_chat_template(
                        [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
                    ),
                    add_special_tokens=False,
                )["input_ids"]
            )
            for q in questions
        ]
        params = types.SamplingParams(max_tokens=args.max_tokens, temperature=0.0)
        settle(args.wait_idle)
        warning = load_warning()
        start = time.perf_counter()
        alone = [backend.sample(p, 1, params).sequences[0].tokens for p in prompts]
        one_at_a_time = time.perf_counter() - start
        start = time.perf_counter()
        batched = [
            r.sequences[0].tokens
            for i in range(0, len(prompts), SAMPLE_BATCH)
            for r in backend.sample_batch([(p, 1, params) for p in prompts[i : i + SAMPLE_BATCH]])
        ]
        in_batches = time.perf_counter() - start
    same = sum(a == b for a, b in zip(alone, batched, strict=True))
    tokens = sum(len(t) for t in alone)
    print_table(
        ["way", "seconds", "tokens/s", "same replies"],
        [
            ["one prompt at a time", one_at_a_time, tokens / one_at_a_time, "-"],
            [f"batches of {SAMPLE_BATCH}", in_batches, tokens / in_batches, f"{same}/{len(alone)}"],
        ],
    )
    print(f"speed-up: {one_at_a_time / in_batches:.2f}× (threads: {torch.get_num_threads()})")
    if warning:
        print(warning)
    if args.json:
        write_json(
            args.json,
            {
                "machine": machine_summary(),
                "repo": git_revision(),
                "args": vars(args),
                "one_at_a_time_s": one_at_a_time,
                "batched_s": in_batches,
                "same_replies": same,
                "prompts": len(alone),
                "tokens": tokens,
            },
        )


if __name__ == "__main__":
    main()
