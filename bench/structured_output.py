"""How often the embedded model's judge votes and critic answers are usable, unconstrained vs
under constrained decoding (`response_format`), and what the constraint costs per token.

One real policy server process on the packaged SmolLM2-135M-Instruct (`metaclaw policy-server`,
started like `metaclaw up` does), driven by the official `openai` client with the fixed prompt
set of `tests/structured_prompts.py`: 6 judge cases (the real rubric), 4 diagnoses and 3 skill
proposals (the critic's real prompts). Each prompt is sent `--repeats` times with seeds 0..n-1,
once as before this change (no response_format: the server ignored it) and once with the
response_format the judge / critic now send. A reply is usable when the scorer's `parse_vote`
or the critic's pydantic model accepts it, exactly as the flows read it.

    .venv/bin/python bench/structured_output.py --home ~/.metaclaw   # reuses the converted model

On a loaded 2-core machine the unconstrained replies (which run to max_tokens) dominate; the
`--judge-max-tokens` / `--critic-max-tokens` caps apply to both phases alike.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._common import git_revision, print_table, write_json  # noqa: E402
from metaclaw.config import LedgerPaths  # noqa: E402
from metaclaw.serving.launch import start_policy_server  # noqa: E402
from tests.helpers import free_port  # noqa: E402
from tests.structured_prompts import all_prompts, request_kwargs, usable  # noqa: E402


async def _run(
    base_url: str, constrained: bool, repeats: int, caps: dict[str, int | None]
) -> list[dict[str, Any]]:
    import openai

    client = openai.AsyncOpenAI(
        base_url=f"{base_url}/v1", api_key="none", timeout=3600, max_retries=0
    )

    async def one(prompt: Any, seed: int) -> dict[str, Any]:
        started = time.monotonic()
        kwargs = request_kwargs(prompt, constrained)
        cap = caps["judge" if prompt.schema is None else "critic"]
        if cap is not None:
            kwargs["max_tokens"] = min(kwargs["max_tokens"], cap)
        resp = await client.chat.completions.create(
            model="policy", messages=prompt.messages, seed=seed, **kwargs
        )
        text = resp.choices[0].message.content or ""
        ok, why = usable(prompt, text)
        return {
            "role": prompt.role,
            "ok": ok,
            "why": why,
            "text": text,
            "tokens": resp.usage.completion_tokens if resp.usage else 0,
            "finish": resp.choices[0].finish_reason,
            "s": time.monotonic() - started,
        }

    try:
        return list(
            await asyncio.gather(*(one(p, s) for p in all_prompts() for s in range(repeats)))
        )
    finally:
        await client.close()


def _summary(rows: list[dict[str, Any]], role: str) -> tuple[int, int, int]:
    mine = [r for r in rows if r["role"] == role]
    return sum(r["ok"] for r in mine), len(mine), sum(r["tokens"] for r in mine)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, help="METACLAW_HOME (reuses its converted model)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--judge-max-tokens", type=int, help="cap judge.max_tokens (512)")
    parser.add_argument("--critic-max-tokens", type=int, help="cap critic.max_tokens (1500)")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    home = args.home or Path(tempfile.mkdtemp(prefix="metaclaw-structured-"))
    port = free_port()
    env = {
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(home / "none.toml"),
        "METACLAW_POLICY__TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "METACLAW_POLICY__REQUEST_TIMEOUT_S": "3600",
    }  # unconstrained replies run long
    print(f"revision {git_revision()}; policy server on SmolLM2-135M, home {home}")
    child = start_policy_server(LedgerPaths(home), port, env=env)
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for label, constrained in (("before", False), ("after", True)):
            started = time.monotonic()
            caps = {"judge": args.judge_max_tokens, "critic": args.critic_max_tokens}
            results[label] = asyncio.run(
                _run(f"http://127.0.0.1:{port}", constrained, args.repeats, caps)
            )
            wall = time.monotonic() - started
            tokens = sum(r["tokens"] for r in results[label])
            print(
                f"{label}: {len(results[label])} calls, {tokens} tokens in {wall:.1f} s "
                f"({1000 * wall / max(tokens, 1):.1f} ms per generated token, batched)"
            )
    finally:
        child.stop()
    table = []
    for role in ("judge", "diagnose", "evolve"):
        b_ok, b_n, b_tok = _summary(results["before"], role)
        a_ok, a_n, a_tok = _summary(results["after"], role)
        table.append([role, f"{b_ok}/{b_n}", f"{a_ok}/{a_n}", b_tok, a_tok])
    print_table(
        ["prompts", "usable before", "usable after", "tokens before", "tokens after"], table
    )
    for r in results["after"]:
        if not r["ok"]:
            print(
                f"  after, unusable {r['role']} ({r['finish']}): {r['why']} :: {r['text'][:200]!r}"
            )
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
