"""Shared helpers for the benchmarks: statistics, tables, environment facts, realistic turns."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `tests` (the stub upstream) and `metaclaw` import from the repo
    sys.path.insert(0, str(REPO))

from metaclaw.ledger.records import Row  # noqa: E402
from metaclaw.proxy.capture import TurnDraft  # noqa: E402

_FINISH_TAKES_COMPLETION = "completion" in inspect.signature(TurnDraft.finish).parameters

# -- statistics ----------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


# -- output --------------------------------------------------------------------------------


def fmt(value: Any, digits: int = 2) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:,.{digits}f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> None:
    """A plain, aligned text table (left-aligned first column, right-aligned others)."""
    cells = [[fmt(c, digits) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.ljust(w) if i == 0 else v.rjust(w)
            for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ]
        return "  ".join(parts)

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print(line(r))


def write_json(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"figures written to {path}")


# -- environment ---------------------------------------------------------------------------


def filesystem_of(path: Path) -> str:
    """`<fstype> on <mountpoint>` for the mount holding `path` (from /proc/mounts)."""
    target = str(Path(path).resolve())
    best = ("?", "?")
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                prefix = mount.rstrip("/") + "/"
                if (target == mount or target.startswith(prefix)) and len(mount) >= len(best[1]):
                    best = (parts[2], mount)
    except OSError:
        pass
    return f"{best[0]} on {best[1]}"


def machine_summary() -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "revision": git_revision(),
        "cores": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def git_revision() -> str:
    """`<short HEAD>[+dirty]` of the repository (read-only git calls), or `unknown`."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process (all its threads) has used, from /proc."""
    with open(f"/proc/{pid}/stat") as fh:
        data = fh.read()
    fields = data[data.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15)


def system_busy_seconds() -> float:
    """CPU seconds all processes on the machine have used (all cores, from /proc/stat)."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """How much CPU processes other than ours used over an interval (noise indicator)."""

    def __init__(self) -> None:
        self.start = system_busy_seconds()
        self.t0 = time.monotonic()

    def cores(self, ours_cpu_s: float) -> float:
        """Average number of cores busy with other work since construction."""
        elapsed = time.monotonic() - self.t0
        other = system_busy_seconds() - self.start - ours_cpu_s
        return max(0.0, other / elapsed) if elapsed > 0 else 0.0


def wait_for_idle(max_wait_s: float, threshold: float = 0.25, quiet_s: float = 3.0) -> bool:
    """Wait (up to `max_wait_s`) until other processes use < `threshold` cores for `quiet_s`."""
    deadline = time.monotonic() + max_wait_s
    quiet_since: float | None = None
    while time.monotonic() < deadline:
        probe = OtherLoad()
        time.sleep(0.5)
        if probe.cores(0.0) < threshold:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since >= quiet_s:
                return True
        else:
            quiet_since = None
    return False


def add_wait_idle(parser: argparse.ArgumentParser) -> None:
    """The `--wait-idle S` option every benchmark takes (see `settle`)."""
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for other processes to go quiet",
    )


def settle(wait_idle_s: float) -> None:
    """Honour `--wait-idle`: wait for a quiet machine, and say so when it never came."""
    if wait_idle_s > 0 and not wait_for_idle(wait_idle_s):
        print(f"(machine not idle after waiting {wait_idle_s:.0f} s; starting anyway)")


def load_warning() -> str | None:
    """A line to print when the machine is already busy before a benchmark starts."""
    probe = OtherLoad()
    time.sleep(1.0)
    busy = probe.cores(0.0)
    if busy > 0.25:
        return (
            f"WARNING: other processes are using {busy:.1f} of {os.cpu_count()} cores "
            "right now; figures will be noisy"
        )
    return None


def clean_child_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment for a child server: no METACLAW_* or HTTP proxy leaking in from ours."""
    drop = {"http_proxy", "https_proxy", "all_proxy"}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("METACLAW_") and k.lower() not in drop
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


# -- realistic turns -----------------------------------------------------------------------

_SYSTEM = (
    "You are a careful coding assistant working inside the user's repository. Prefer small, "
    "reviewable changes; explain the reason for each change; run the tests before you claim "
    "that something works; never invent file names. When a tool is available, use it instead "
    "of guessing."
)
_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file of the repository.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "offset": {"type": "integer"}},
                "required": ["path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_tests",
            "description": "Run the test suite, optionally filtered.",
            "parameters": {"type": "object", "properties": {"filter": {"type": "string"}}},
        },
    },
]


def _words(n: int, seed: int) -> str:
    vocab = (
        "the",
        "proxy",
        "ledger",
        "turn",
        "stream",
        "parquet",
        "fsync",
        "client",
        "reply",
        "session",
        "token",
        "latency",
        "commit",
        "segment",
        "query",
        "view",
    )
    return " ".join(vocab[(seed * 7 + i * 3) % len(vocab)] for i in range(n))


def _request(variant: int) -> dict[str, Any]:
    """A chat request of roughly 1-2 KB: system prompt, a short history, tools."""
    history = 1 + variant % 3
    messages: list[dict[str, Any]] = [{"role": "system", "content": _SYSTEM}]
    for h in range(history):
        messages.append({"role": "user", "content": _words(12 + (variant + h) % 20, variant + h)})
        messages.append({"role": "assistant", "content": _words(20 + variant % 15, h)})
    messages.append({"role": "user", "content": _words(15 + variant % 25, variant)})
    body: dict[str, Any] = {"model": "gpt-bench", "messages": messages, "temperature": 0.2}
    if variant % 2:
        body["tools"] = _TOOLS
    return body


def _response(variant: int, text: str) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-bench-{variant}",
        "object": "chat.completion",
        "created": 1_760_000_000,
        "model": "gpt-bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 180 + variant,
            "completion_tokens": 40,
            "total_tokens": 220 + variant,
        },
    }


class TurnFactory:
    """Builds `turns` rows the way the proxy does (`TurnDraft(...).finish(...)`).

    A pool of request/response variants is prepared once; each row gets a fresh turn id and
    timestamps, so rows are realistic in size (~1.5-3 KB as a WAL line) and cheap to make.
    """

    def __init__(self, variants: int = 64) -> None:
        self.requests = [_request(v) for v in range(variants)]
        self.texts = [_words(40, v) for v in range(variants)]
        self.responses = [_response(v, t) for v, t in enumerate(self.texts)]

    def row(self, i: int, turn_id: str | None = None) -> Row:
        v = i % len(self.requests)
        request = self.requests[v]
        draft = TurnDraft(
            session_id=f"sess-bench-{i // 8}",
            turn_index=i % 8,
            client="openai",
            endpoint="/v1/chat/completions",
            request=request,
            stream=bool(v % 3 == 0),
            model=request["model"],
        )
        if turn_id is not None:
            draft.turn_id = turn_id
        draft.mark_first_token()
        response = self.responses[v]
        if _FINISH_TAKES_COMPLETION:
            from metaclaw.proxy.completion import Completion

            done = Completion(
                text=self.texts[v], finish_reason="stop", usage=response["usage"], model="gpt-bench"
            )
            return draft.finish(status="ok", http_status=200, response=response, completion=done)
        return draft.finish(  # the earlier signature, with the completion's fields spelled out
            status="ok",
            http_status=200,
            response=response,
            completion_text=self.texts[v],
            finish_reason="stop",
            usage=response["usage"],
            model="gpt-bench",
        )


def new_id() -> str:
    return uuid.uuid4().hex
