"""Backfill import benchmark: turns/s and peak memory on a generated history of many files.

    .venv/bin/python bench/replay_throughput.py            # 25k and 100k turns (~3-5 minutes)
    .venv/bin/python bench/replay_throughput.py --quick    # 5k and 20k turns, smoke run

Generates OpenClaw session JSONL v3 files (10 assistant turns per session by default, every
third turn a tool call with its tool result, realistic message sizes) for two history sizes,
then imports each history in a fresh child process (`Importer`, exactly what `metaclaw replay`
runs: parse → WAL batches → periodic ingest → final ingest into Parquet) and reads the child's
peak RSS from `wait4`. A parse-only pass (no ledger writes) in the same child isolates the
parsers' speed. Memory must stay flat with history size: the large history's peak RSS is
compared with the small one's (ratio ≈ 1 means flat; the importer streams files and holds at
most one batch, and ingest runs whenever the WAL reaches `replay.ingest_every_bytes`).

Targets: ≥ 1,000 turns/s end to end (parse + durable WAL + ingest) at ≥ 100k turns; peak RSS of
the large history ≤ 1.3 × the small one's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    OtherLoad,
    filesystem_of,
    load_warning,
    machine_summary,
    print_table,
    write_json,
)

TARGET_TPS = 1000.0
TARGET_RSS_RATIO = 1.3
WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "agents",
    "read",
    "files",
    "and",
    "call",
    "tools",
    "to",
    "answer",
    "questions",
    "about",
    "code",
    "tests",
    "builds",
    "deploys",
    "logs",
    "and",
    "data",
]


def _text(n: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n))


def generate(directory: Path, turns: int, per_session: int) -> tuple[int, int]:
    """OpenClaw v3 session files holding `turns` assistant turns; returns (files, bytes)."""
    directory.mkdir(parents=True)
    files = size = 0
    t0 = 1_767_225_600_000  # 2026-01-01 in ms
    for s in range(0, turns, per_session):
        sub = directory / f"agent{s // (per_session * 1000):03d}"
        sub.mkdir(exist_ok=True)
        sid = f"sess-{s:08d}"
        ts = t0 + s * 60_000
        lines = [
            {"type": "session", "version": 3, "id": sid, "timestamp": _iso(ts)},
            {
                "type": "model_change",
                "id": "m0",
                "parentId": None,
                "timestamp": _iso(ts),
                "provider": "anthropic",
                "modelId": "claude-sonnet-4-6",
            },
        ]
        parent = "m0"
        for t in range(min(per_session, turns - s)):
            ts += 1000
            uid, aid = f"u{t}", f"a{t}"
            lines.append(
                {
                    "type": "message",
                    "id": uid,
                    "parentId": parent,
                    "timestamp": _iso(ts),
                    "message": {"role": "user", "content": _text(30, s + t), "timestamp": ts},
                }
            )
            content: list[dict[str, Any]] = [{"type": "text", "text": _text(60, s + t + 1)}]
            if t % 3 == 2:
                content.append(
                    {
                        "type": "toolCall",
                        "id": f"call_{t}",
                        "name": "read",
                        "arguments": {"path": f"src/mod{t}.py"},
                    }
                )
            lines.append(
                {
                    "type": "message",
                    "id": aid,
                    "parentId": uid,
                    "timestamp": _iso(ts + 800),
                    "message": {
                        "role": "assistant",
                        "content": content,
                        "model": "claude-sonnet-4-6",
                        "stopReason": "toolUse" if t % 3 == 2 else "stop",
                        "usage": {
                            "input": 900 + 40 * t,
                            "output": 80,
                            "cacheRead": 0,
                            "cacheWrite": 0,
                        },
                        "timestamp": ts + 100,
                    },
                }
            )
            parent = aid
            if t % 3 == 2:
                rid = f"r{t}"
                lines.append(
                    {
                        "type": "message",
                        "id": rid,
                        "parentId": aid,
                        "timestamp": _iso(ts + 900),
                        "message": {
                            "role": "toolResult",
                            "toolCallId": f"call_{t}",
                            "toolName": "read",
                            "isError": False,
                            "content": [{"type": "text", "text": _text(80, t)}],
                        },
                    }
                )
                parent = rid
        data = "\n".join(json.dumps(line) for line in lines) + "\n"
        path = sub / f"{sid}.jsonl"
        path.write_text(data)
        files += 1
        size += len(data)
    return files, size


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"


# -- the child: one import, measured --------------------------------------------------------


def child(logs: Path, home: Path) -> None:
    os.environ["METACLAW_HOME"] = str(home)
    os.environ["METACLAW_CONFIG"] = str(home / "none.toml")
    import resource

    from metaclaw.config import Settings
    from metaclaw.ledger import query
    from metaclaw.replay import Importer, Turn, discover, parse_source
    from metaclaw.replay.importer import parse_options

    settings = Settings()
    t = time.perf_counter()
    found = discover([logs])
    discover_s = time.perf_counter() - t
    opts = parse_options(settings)
    t = time.perf_counter()
    parsed = sum(isinstance(i, Turn) for s in found.sources for i in parse_source(s, opts))
    parse_s = time.perf_counter() - t
    rss_after_parse = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    importer = Importer(settings)
    for source in found.sources:
        importer.import_source(source)
    importer.flush()
    wal_s = time.perf_counter() - t
    t = time.perf_counter()
    importer.ingest()
    final_ingest_s = time.perf_counter() - t
    summary = importer.summary
    _, ledger = query(settings.paths, "SELECT count(*) FROM turns")
    print(
        json.dumps(
            {
                "files": len(found.sources),
                "turns": summary.turns,
                "parsed": parsed,
                "skipped": summary.skipped,
                "ledger_turns": ledger[0][0],
                "discover_s": discover_s,
                "parse_s": parse_s,
                "import_s": wal_s,
                "final_ingest_s": final_ingest_s,
                "ingested_rows": summary.ingested_rows,
                "peak_rss_parse_kib": rss_after_parse,
                "ingest_every_bytes": settings.replay.ingest_every_bytes,
            }
        )
    )


def run_child(logs: Path, home: Path) -> dict[str, Any]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", str(logs), str(home)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed with {proc.returncode}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = usage.ru_maxrss / 1024
    result["cpu_s"] = usage.ru_utime + usage.ru_stime
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=100_000, help="large history (turns)")
    parser.add_argument("--small", type=int, default=None, help="small history (default 1/4)")
    parser.add_argument("--per-session", type=int, default=10)
    parser.add_argument("--dir", type=Path, default=None, help="where to generate (temp dir)")
    parser.add_argument("--quick", action="store_true", help="5k and 20k turns")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    large = 20_000 if args.quick else args.turns
    small = args.small or large // 4
    base = Path(tempfile.mkdtemp(prefix="replay-bench-", dir=args.dir))
    print(f"machine: {machine_summary()}")
    print(f"data in {base} ({filesystem_of(base)})")
    if warning := load_warning():
        print(warning)
    results = []
    try:
        for turns in (small, large):
            logs = base / f"logs-{turns}"
            t = time.perf_counter()
            files, size = generate(logs, turns, args.per_session)
            print(
                f"generated {turns:,} turns in {files:,} files ({size / 2**20:.1f} MiB) "
                f"in {time.perf_counter() - t:.1f} s"
            )
            load = OtherLoad()
            result = run_child(logs, base / f"home-{turns}")
            result["other_load_cores"] = load.cores(result["cpu_s"])
            result["log_mib"] = size / 2**20
            assert result["ledger_turns"] == turns == result["turns"], result
            total = result["import_s"] + result["final_ingest_s"]
            result["turns_per_s"] = turns / total
            result["parse_turns_per_s"] = turns / result["parse_s"]
            results.append(result)
            shutil.rmtree(logs)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print()
    print_table(
        [
            "history",
            "files",
            "log MiB",
            "parse-only turns/s",
            "import turns/s",
            "import s",
            "of which final ingest s",
            "peak RSS MiB",
            "other load (cores)",
        ],
        [
            [
                f"{r['turns']:,} turns",
                r["files"],
                r["log_mib"],
                r["parse_turns_per_s"],
                r["turns_per_s"],
                r["import_s"] + r["final_ingest_s"],
                r["final_ingest_s"],
                r["peak_rss_mib"],
                r["other_load_cores"],
            ]
            for r in results
        ],
        digits=1,
    )
    ratio = results[1]["peak_rss_mib"] / results[0]["peak_rss_mib"]
    tps = results[1]["turns_per_s"]
    print()
    print(
        f"import throughput at {large:,} turns: {tps:,.0f} turns/s "
        f"({'PASS' if tps >= TARGET_TPS else 'FAIL'}: target >= {TARGET_TPS:,.0f})"
    )
    print(
        f"peak RSS {large:,} vs {small:,} turns: {ratio:.2f}x "
        f"({'PASS' if ratio <= TARGET_RSS_RATIO else 'FAIL'}: flat means <= "
        f"{TARGET_RSS_RATIO}x)"
    )
    if args.json:
        write_json(
            args.json, {"machine": machine_summary(), "results": results, "rss_ratio": ratio}
        )


if __name__ == "__main__":
    main()
