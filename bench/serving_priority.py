"""Users first: a user's latency on the policy server while the learning loop floods it.

    .venv/bin/python bench/serving_priority.py                # ~4-5 min on 2 cores
    .venv/bin/python bench/serving_priority.py --phase-s 20   # shorter, noisier
    .venv/bin/python bench/serving_priority.py --home DIR --json out.json --wait-idle 120

The real policy server (`metaclaw policy-server` as a child process, as `metaclaw up` runs it)
on the embedded model (SmolLM2-135M-Instruct), with its default settings. A scripted user sends
a chat request (48 new tokens, greedy, ignore_eos) every `--user-interval-s` seconds (at least
1.25× one idle reply, measured first, so a loaded machine does not queue users behind each
other), on a fixed schedule whether or not the previous one has finished (open loop), through the
official `openai` client; its latency is the whole non-streamed response. Three conditions:

- idle: the user alone;
- priority: plus a flood of judge-like requests (a ~300-token transcript prompt, 64 new tokens
  at T = 0.6) from `--flood` concurrent workers marked `X-MetaClaw-Priority: background`, as
  the judge, critic and gate clients send them;
- no priority: the same flood without the header (everything interactive, as before issue 15
  item 4): the baseline.

They run interleaved, idle → priority → no priority, repeated `--rounds` times, each phase
`--phase-s` seconds, so drift in other load on the machine hits all three alike. Between phases
the flood is stopped and the server drained (`/healthz`: nothing queued, active or paused).
Printed: user p50/p99/max latency per condition, the ratios to idle (target: p50 ≤ 1.5×,
p99 ≤ 3× with the flood marked background), and the background throughput (requests and tokens
per second) in each flood condition.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import openai

from bench._common import (
    OtherLoad,
    add_wait_idle,
    load_warning,
    machine_summary,
    percentile,
    print_table,
    settle,
    write_json,
)
from metaclaw.config import LedgerPaths
from metaclaw.serving.launch import start_policy_server
from metaclaw.serving.priority import BACKGROUND_HEADERS

USER_TOKENS = 48
JUDGE_TOKENS = 64
USER_PROMPTS = [
    "What is a good way to learn a new language?",
    "Explain what a lighthouse does.",
    "Give me a tip for writing clear emails.",
    "Why is the sky blue?",
    "How do I keep basil alive indoors?",
    "What should I pack for a day hike?",
]
TRANSCRIPT = " ".join(
    f"User: question {i} about the deployment schedule and the budget for the next quarter. "
    f"Assistant: answer {i} with the figures, the owners and the open risks, briefly."
    for i in range(8)
)
JUDGE_MESSAGES = [
    {"role": "system", "content": "You judge an assistant's reply. Answer Score: +1, 0 or -1."},
    {"role": "user", "content": f"Transcript:\n{TRANSCRIPT}\n\nWas the last reply helpful?"},
]
CONDITIONS = ("idle", "priority", "no priority")


@dataclass
class Phase:
    condition: str
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    timeouts: int = 0  # users who gave up (--user-timeout-s): measured, not a failure
    background_done: int = 0
    background_tokens: int = 0
    background_errors: int = 0
    seconds: float = 0.0


async def user_load(
    client: openai.AsyncOpenAI, phase: Phase, duration: float, every: float
) -> None:
    async def one(i: int) -> None:
        t0 = time.monotonic()
        try:
            reply = await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": USER_PROMPTS[i % len(USER_PROMPTS)]}],
                max_tokens=USER_TOKENS,
                temperature=0.0,
                extra_body={"ignore_eos": True},
            )
            assert reply.usage is not None and reply.usage.completion_tokens == USER_TOKENS
            phase.latencies.append(time.monotonic() - t0)
        except openai.APITimeoutError:
            phase.timeouts += 1
        except Exception as exc:  # reported, and a correctness failure of the run
            phase.errors.append(f"{type(exc).__name__}: {exc}"[:200])

    start = time.monotonic()
    tasks = []
    i = 0
    while time.monotonic() - start < duration:
        tasks.append(asyncio.create_task(one(i)))
        i += 1
        await asyncio.sleep(max(0.0, start + i * every - time.monotonic()))
    await asyncio.gather(*tasks)


async def flood_worker(client: openai.AsyncOpenAI, phase: Phase, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            reply = await client.chat.completions.create(
                model="m",
                messages=JUDGE_MESSAGES,  # type: ignore[arg-type]
                max_tokens=JUDGE_TOKENS,
                temperature=0.6,
                extra_body={"ignore_eos": True},
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            phase.background_errors += 1
            await asyncio.sleep(0.5)
            continue
        phase.background_done += 1
        phase.background_tokens += reply.usage.completion_tokens if reply.usage else 0


async def drain(url: str) -> None:
    """Wait until the server has nothing queued, running or paused (a stopped flood's requests
    are cancelled when their connections close)."""
    async with httpx.AsyncClient(timeout=10, trust_env=False) as http:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            health = (await http.get(f"{url}/healthz")).json()
            if health["queued"] == health["active"] == health.get("paused", 0) == 0:
                return
            await asyncio.sleep(0.2)
    raise RuntimeError("the policy server did not drain within 120 s")


async def run_phase(url: str, condition: str, args: argparse.Namespace) -> Phase:
    phase = Phase(condition)
    common: dict[str, Any] = {"base_url": f"{url}/v1", "api_key": "unused", "max_retries": 0}
    user = openai.AsyncOpenAI(**common, timeout=args.user_timeout_s)
    headers = BACKGROUND_HEADERS if condition == "priority" else None
    judge = openai.AsyncOpenAI(**common, timeout=600, default_headers=headers)
    stop = asyncio.Event()
    flood = []
    if condition != "idle":
        flood = [asyncio.create_task(flood_worker(judge, phase, stop)) for _ in range(args.flood)]
        await asyncio.sleep(args.warm_s)  # let the flood fill the batch before the user comes
    t0 = time.monotonic()
    await user_load(user, phase, args.phase_s, args.user_interval_s)
    phase.seconds = time.monotonic() - t0
    stop.set()
    for task in flood:
        task.cancel()
    await asyncio.gather(*flood, return_exceptions=True)
    await judge.close()
    await user.close()
    await drain(url)
    return phase


def summarise(phases: list[Phase]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for condition in CONDITIONS:
        mine = [p for p in phases if p.condition == condition]
        lat = [x for p in mine for x in p.latencies]
        seconds = sum(p.seconds for p in mine) or 1.0
        out[condition] = {
            "requests": len(lat),
            "errors": sum(len(p.errors) for p in mine),
            "user_timeouts": sum(p.timeouts for p in mine),
            "p50_s": percentile(lat, 50) if lat else float("nan"),
            "p99_s": percentile(lat, 99) if lat else float("nan"),
            "max_s": max(lat) if lat else float("nan"),
            "mean_s": sum(lat) / len(lat) if lat else float("nan"),
            "background_per_s": sum(p.background_done for p in mine) / seconds,
            "background_tokens_per_s": sum(p.background_tokens for p in mine) / seconds,
            "background_errors": sum(p.background_errors for p in mine),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=None, help="reuse a converted model here")
    parser.add_argument("--phase-s", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--user-interval-s", type=float, default=4.0)
    parser.add_argument("--flood", type=int, default=16, help="concurrent background callers")
    parser.add_argument("--warm-s", type=float, default=3.0)
    parser.add_argument(
        "--user-timeout-s", type=float, default=600.0, help="a user gives up (counted) after this"
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra METACLAW_* settings for the server (e.g. "
        "METACLAW_POLICY__BACKGROUND_ROWS_WHILE_INTERACTIVE=8)",
    )
    parser.add_argument("--json", type=Path, default=None)
    add_wait_idle(parser)
    args = parser.parse_args(argv)
    settle(args.wait_idle)
    home = args.home or Path(tempfile.mkdtemp(prefix="metaclaw-bench-priority-"))
    warning = load_warning()
    if warning:
        print(warning)
    print(f"machine: {machine_summary()}  home: {home}")
    env = {"METACLAW_HOME": str(home), "METACLAW_CONFIG": str(home / "none.toml")}
    env.update(dict(kv.split("=", 1) for kv in args.server_env))
    port = _free_port()
    t0 = time.monotonic()
    child = start_policy_server(LedgerPaths(home), port, env=env)
    print(f"policy server healthy after {time.monotonic() - t0:.1f} s")
    url = f"http://127.0.0.1:{port}"
    probe = OtherLoad()
    phases: list[Phase] = []
    try:

        async def everything() -> None:
            warm = await run_phase(
                url, "idle", argparse.Namespace(**{**vars(args), "phase_s": 0.1})
            )
            # Open loop at a rate the idle server sustains: on a machine other work slows
            # down, a fixed rate faster than one reply would queue users behind each other.
            args.user_interval_s = max(args.user_interval_s, 1.25 * max(warm.latencies))
            print(f"user interval {args.user_interval_s:.1f} s", flush=True)
            for r in range(args.rounds):
                for condition in CONDITIONS:
                    phase = await run_phase(url, condition, args)
                    phases.append(phase)
                    print(
                        f"  round {r + 1} {condition:<11} users {len(phase.latencies):>3}  "
                        f"p50 {percentile(phase.latencies, 50) if phase.latencies else 0:.2f} s  "
                        f"timed out {phase.timeouts}  background {phase.background_done} done"
                        + (f"  errors: {phase.errors}" if phase.errors else ""),
                        flush=True,
                    )

        asyncio.run(everything())
        health = httpx.get(f"{url}/healthz", timeout=10, trust_env=False).json()
    finally:
        child.stop()
    other = probe.cores(0.0)
    table = summarise(phases)
    idle = table["idle"]
    rows = []
    for condition in CONDITIONS:
        t = table[condition]
        rows.append(
            [
                condition,
                t["requests"],
                t["user_timeouts"],
                t["p50_s"],
                t["p99_s"],
                t["max_s"],
                t["p50_s"] / idle["p50_s"],
                t["p99_s"] / idle["p99_s"],
                t["background_per_s"],
                t["background_tokens_per_s"],
            ]
        )
    print()
    print_table(
        [
            "condition",
            "user reqs",
            "timed out",
            "p50 s",
            "p99 s",
            "max s",
            "p50/idle",
            "p99/idle",
            "bg req/s",
            "bg tok/s",
        ],
        rows,
    )
    pri = table["priority"]
    p50_ok = pri["p50_s"] <= 1.5 * idle["p50_s"]
    p99_ok = pri["p99_s"] <= 3.0 * idle["p99_s"]
    print(
        f"target p50 ≤ 1.5× idle: {'met' if p50_ok else 'MISSED'} "
        f"({pri['p50_s'] / idle['p50_s']:.2f}×); "
        f"p99 ≤ 3× idle: {'met' if p99_ok else 'MISSED'} ({pri['p99_s'] / idle['p99_s']:.2f}×)"
    )
    print(f"server counters: {health['stats']}")
    print(f"other load during the run (includes this script): {other:.2f} cores")
    errors = sum(t["errors"] for t in table.values())
    if args.json:
        write_json(
            args.json,
            {
                "machine": machine_summary(),
                "args": {k: str(v) for k, v in vars(args).items()},
                "conditions": table,
                "server_stats": health["stats"],
                "other_load_cores": other,
            },
        )
    if errors:
        print(f"{errors} user requests failed")
        return 1
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
