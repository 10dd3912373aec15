"""Hot-swap under load: promote → first request served by the new weights, and failed requests.

    .venv/bin/python bench/deploy_swap.py                       # tiny model, ~1 min
    .venv/bin/python bench/deploy_swap.py --model packaged      # SmolLM2-135M-Instruct
    .venv/bin/python bench/deploy_swap.py --concurrency 16 --swaps 10 --json out.json

Processes: the local policy server as a real child (`metaclaw policy-server`, the same launcher
`metaclaw up` uses) on the tiny test model (default) or the packaged SmolLM2-135M-Instruct, and
this script as the load generator: `--concurrency` workers each sending chat completions back
to back (`--max-tokens` new tokens, greedy) for the whole run.

Every `--interval` seconds (at least three steady-state request latencies) the script promotes
the other of two LoRA checkpoints through the registry — `metaclaw.deploy.deployer.promote`,
exactly what the deploy flow and `metaclaw checkpoints promote` do: lock, ledger append
(fsync), `POST /admin/adapter` — and the last swap is a `rollback`. Per swap it records:
- **ack**: the promote call's duration = **ledger** (lock, read, adapter check, fsynced append)
  + **server swap** (`POST /admin/adapter` until the server acknowledges: adapter validated and
  loaded between forward passes);
- **swap latency**: promote call start → the first response *completed* by the new weights
  (which includes generating that response: compare with the steady-state request latency
  measured in the same run before any swap, shown as the baseline);
- requests failed (non-200 or transport error) over the whole run; the target is 0.
Exit status 1 when any request failed or a swap never took effect.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench`, `tests` and `metaclaw` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import httpx

from bench._common import (
    git_revision,
    load_warning,
    machine_summary,
    median,
    percentile,
    print_table,
    write_json,
)

PROMPT = [{"role": "user", "content": "Question 1: tell me something."}]


@dataclass
class Served:
    started: float
    ended: float
    checkpoint: str | None
    error: str | None = None


def make_adapters(model_dir: Path, out: Path) -> dict[str, Path]:
    """Two LoRA checkpoints (LocalBackend, a few SFT steps each) that answer differently."""
    from tests.deploy_helpers import train_toward

    return {
        "ckpt-A": train_toward(model_dir, out, "A", "Paris", steps=2),
        "ckpt-B": train_toward(model_dir, out, "B", "blue", steps=2),
    }


async def load(
    url: str, stop: asyncio.Event, workers: int, max_tokens: int, out: list[Served]
) -> list[Served]:
    body = {"model": "policy", "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0}

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                resp = await client.post("/v1/chat/completions", json=body)
                if resp.status_code != 200:
                    out.append(Served(started, time.monotonic(), None, str(resp.status_code)))
                    continue
                ckpt = resp.json()["metaclaw"]["checkpoint"]
                out.append(Served(started, time.monotonic(), ckpt))
            except httpx.HTTPError as exc:
                out.append(Served(started, time.monotonic(), None, repr(exc)))

    limits = httpx.Limits(max_connections=workers * 2)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(workers)))
    return out


async def scenario(
    settings: Any, url: str, args: argparse.Namespace
) -> tuple[list[Served], list[dict[str, Any]], float]:
    from metaclaw.deploy import deployer

    stop = asyncio.Event()
    served: list[Served] = []
    task = asyncio.create_task(load(url, stop, args.concurrency, args.max_tokens, served))
    await asyncio.sleep(args.warmup)
    while not served:  # a slow model: wait for the first responses to size the interval
        await asyncio.sleep(0.5)
    baseline_end = time.monotonic()
    steady = median([s.ended - s.started for s in served if not s.error])
    # each swap must outlast a request sent after it, or it cannot be seen taking effect
    interval = max(args.interval, 3 * steady + 0.5)
    swaps: list[dict[str, Any]] = []
    targets = ["ckpt-A", "ckpt-B"]
    for i in range(args.swaps):
        asked = time.monotonic()
        if i == args.swaps - 1 and i > 0:
            change = await asyncio.to_thread(
                deployer.rollback, settings, actor="bench", reason="bench rollback"
            )
            target = change.restored
        else:
            target = targets[i % 2]
            change = await asyncio.to_thread(
                deployer.promote, settings, target, actor="bench", reason="bench swap", force=True
            )
        acked = time.monotonic()
        swaps.append(
            {
                "target": target,
                "asked": asked,
                "acked": acked,
                "notice": change.notice.status if change.notice else None,
                "server_s": change.notice.seconds if change.notice else float("nan"),
            }
        )
        await asyncio.sleep(interval)
    stop.set()
    return await task, swaps, baseline_end


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny | packaged | an HF model dir")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument(
        "--interval",
        type=float,
        default=2.0,
        help="seconds between swaps (at least 3 steady requests long)",
    )
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before swaps")
    parser.add_argument("--threads", type=int, default=1, help="policy server torch threads")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    from metaclaw.config import Settings
    from metaclaw.serving.launch import start_policy_server
    from tests.deploy_helpers import add_candidates, candidate_row
    from tests.helpers import free_port

    root = Path(tempfile.mkdtemp(prefix="metaclaw-bench-deploy-"))
    home = root / "home"
    if args.model == "tiny":
        from tests.tiny_model import save_tiny_model

        model_dir = save_tiny_model(root / "model")
    elif args.model == "packaged":
        from metaclaw.models import resolve_model_dir

        model_dir = Path(resolve_model_dir("HuggingFaceTB/SmolLM2-135M-Instruct", home))
    else:
        model_dir = Path(args.model)
    print(
        f"revision {git_revision()} · model {model_dir} · concurrency {args.concurrency} · "
        f"{args.max_tokens} tokens/request · {args.swaps} swaps",
        flush=True,
    )
    adapters = make_adapters(model_dir, root / "ckpts")
    port = free_port()
    settings = Settings(
        home=home,
        training={"base_model": str(model_dir), "lora_rank": 4},
        policy={"port": port, "model": str(model_dir)},
    )
    add_candidates(
        settings.paths,
        *(candidate_row(cid, path, i + 1) for i, (cid, path) in enumerate(adapters.items())),
    )
    env = {
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(root / "none.toml"),
        "METACLAW_POLICY__MODEL": str(model_dir),
        "METACLAW_POLICY__TORCH_THREADS": str(args.threads),
        "METACLAW_POLICY__MAX_BATCH": str(max(8, args.concurrency)),
        "OMP_NUM_THREADS": str(args.threads),
    }
    started = time.monotonic()
    child = start_policy_server(settings.paths, port, env=env, timeout_s=900)
    print(f"policy server up in {time.monotonic() - started:.1f} s", flush=True)
    try:
        served, swaps, baseline_end = asyncio.run(
            scenario(settings, f"http://127.0.0.1:{port}", args)
        )
    finally:
        child.stop()

    failed = [s for s in served if s.error]
    steady = [s.ended - s.started for s in served if s.ended <= baseline_end and not s.error]
    rows, latencies, acks, servers, never = [], [], [], [], 0
    for i, swap in enumerate(swaps):
        until = swaps[i + 1]["asked"] if i + 1 < len(swaps) else float("inf")
        first = min(
            (
                s.ended
                for s in served
                if s.checkpoint == swap["target"]
                and s.ended >= swap["asked"]
                and s.started < until
                and not s.error
            ),
            default=None,
        )
        ack = swap["acked"] - swap["asked"]
        acks.append(ack)
        if first is None:
            never += 1
            latency = float("nan")
        else:
            latency = first - swap["asked"]
            latencies.append(latency)
        rows.append(
            [
                i + 1,
                swap["target"] or "base",
                swap["notice"],
                (ack - swap["server_s"]) * 1000,
                swap["server_s"] * 1000,
                ack * 1000,
                latency * 1000,
            ]
        )
        servers.append(swap["server_s"])
    print_table(
        [
            "swap",
            "now serving",
            "server",
            "ledger ms",
            "server swap ms",
            "ack ms",
            "swap latency ms",
        ],
        rows,
        1,
    )
    print()
    summary = {
        "requests": len(served),
        "failed_requests": len(failed),
        "steady_request_ms_p50": median(steady) * 1000,
        "steady_request_ms_p95": percentile(steady, 95) * 1000,
        "ack_ms_median": median(acks) * 1000,
        "server_swap_ms_median": median(servers) * 1000,
        "swap_latency_ms_median": median(latencies) * 1000,
        "swap_latency_ms_max": max(latencies) * 1000 if latencies else float("nan"),
        "swaps_never_effective": never,
    }
    print_table(["figure", "value"], [[k, v] for k, v in summary.items()], 1)
    warning = load_warning()
    if warning:
        print(f"\nwarning: {warning}")
    ok = not failed and never == 0
    print(
        f"\nverdict: requests failed during swaps {len(failed)} (target 0) — "
        f"{'PASS' if ok else 'FAIL'}; median swap latency {summary['swap_latency_ms_median']:.0f}"
        f" ms vs a steady request of {summary['steady_request_ms_p50']:.0f} ms"
    )
    if failed:
        print("first failures:", [s.error for s in failed[:5]])
    if args.json:
        write_json(
            args.json,
            {
                "args": vars(args),
                "summary": summary,
                "swaps": rows,
                "machine": machine_summary(),
                "revision": git_revision(),
            },
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
