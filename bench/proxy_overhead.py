"""What the capture proxy adds: the same load against the stub upstream directly and through the
proxy, in the same run, with one proxy process and with several (`proxy.workers`).

    .venv/bin/python bench/proxy_overhead.py            # full run (2,000 requests per config)
    .venv/bin/python bench/proxy_overhead.py --quick    # smoke run (300 requests per config)
    .venv/bin/python bench/proxy_overhead.py --tail     # the tail-latency case (issue 16)

Three kinds of processes: the stub upstream (tests/stubs/upstream_server.py), the proxy
(`python -m metaclaw proxy`, its ledger in a temp METACLAW_HOME; with `--workers 1 2` once per
worker count, each with its own home), and this one, the load generator. On a small machine the
load generator competes with the servers for the same cores; the CPU each process used (the
proxy's: all its worker processes) and the load average are printed beside the figures.

`--tail`: a 100 ms upstream, 32 concurrent clients, 1,500 non-streaming requests each way,
direct/proxy/proxy/direct (A B B A), for 1 and 2 workers: added p50/p99, throughput and proxy
CPU per request.

Targets (issue): added p50 <= 2 ms, added p99 <= 10 ms, proxy throughput >= 0.9x direct,
proxy CPU <= 0.3 ms per non-streaming request.
Exit status 1 only on a correctness failure (errors, lost or doubled turns); a missed
performance target shows in the verdict line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import orjson

from bench._common import (
    REPO,
    OtherLoad,
    add_wait_idle,
    clean_child_env,
    load_warning,
    machine_summary,
    median,
    percentile,
    print_table,
    proc_cpu_seconds,
    settle,
    write_json,
)
from metaclaw.config import LedgerPaths
from metaclaw.ledger import query
from tests.stubs.upstream_server import StubUpstream

PATH = "/v1/chat/completions"
PROMPT = "hello [[words:20]]"
DONE = b"data: [DONE]\n\n"


def prompt(upstream_delay: float = 0.0) -> str:
    return PROMPT + (f" [[delay:{upstream_delay:g}]]" if upstream_delay else "")


def request_body(stream: bool, upstream_delay: float = 0.0) -> bytes:
    content = prompt(upstream_delay)
    return orjson.dumps(
        {"model": "m", "messages": [{"role": "user", "content": content}], "stream": stream}
    )


# -- servers -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live descendants (from /proc)."""
    total = proc_cpu_seconds(pid)
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    total += tree_cpu_seconds(int(child))
    return total


class Proxy:
    """`python -m metaclaw proxy` as a real subprocess with its own METACLAW_HOME."""

    def __init__(self, home: Path, upstream_base: str, workers: int = 1) -> None:
        self.home = home
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = clean_child_env(
            {
                "METACLAW_HOME": str(home),
                "METACLAW_CONFIG": str(home / "none.toml"),
                "METACLAW_UPSTREAM__BASE_URL": upstream_base,
                "METACLAW_PROXY__WORKERS": str(workers),
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "proxy.log"

    def start(self, timeout: float = 60.0) -> Proxy:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "metaclaw", "proxy", "--port", str(self.port)],
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited early:\n{self.log_path.read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                if self.health_response().status_code == 200:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("proxy did not answer /healthz in time")

    def settle(self, timeout: float = 180.0) -> float:
        """Wait until every worker is past start-up (skill library loaded, heap frozen: what a
        proxy serving for a while looks like); the seconds it took."""
        began = time.monotonic()
        settled: set[int] = set()
        while len(settled) < self.workers:
            if time.monotonic() - began > timeout:
                raise RuntimeError(f"only {len(settled)} of {self.workers} workers settled")
            health = self.health()  # a new connection each time: any worker may answer
            skills, heap = health.get("skills"), health.get("heap")
            if (skills is None or skills["ready"]) and (heap is None or heap["freezes"] >= 2):
                settled.add(int(health["pid"]))
            else:
                time.sleep(0.2)
        return time.monotonic() - began

    def health_response(self) -> httpx.Response:
        return httpx.get(self.url + "/healthz", timeout=2, trust_env=False)

    def health(self) -> dict[str, Any]:
        return self.health_response().json()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        """CPU of the proxy's processes: the server, or the supervisor and its workers."""
        return tree_cpu_seconds(self.pid)

    def stop(self) -> int | None:
        """SIGTERM (in-flight turns finish, the WAL is flushed); SIGKILL after 30 s."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode


# -- load generator ------------------------------------------------------------------------


@dataclass
class RunResult:
    target: str  # direct | proxy
    stream: bool
    concurrency: int
    requests: int
    errors: int
    wall_s: float
    latencies_ms: list[float] = field(repr=False)
    ttft_ms: list[float] = field(repr=False)
    cpu_s: dict[str, float] = field(default_factory=dict)  # process -> CPU seconds in the run
    first_error: str | None = None
    other_cores: float = 0.0  # cores busy with processes other than ours during the run
    loadavg: float = 0.0  # 1-minute load average at the end of the run
    workers: int = 1  # proxy processes serving

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.wall_s if self.wall_s else float("nan")

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def ttft(self, q: float) -> float:
        return percentile(self.ttft_ms, q)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k not in ("latencies_ms", "ttft_ms")}
        out.update(
            p50_ms=self.p(50),
            p90_ms=self.p(90),
            p99_ms=self.p(99),
            max_ms=self.p(100),
            rps=self.rps,
        )
        if self.stream:
            out.update(ttft_p50_ms=self.ttft(50), ttft_p99_ms=self.ttft(99))
        return out


class ResponseError(Exception):
    pass


@dataclass
class LoadOutcome:
    requests: int
    wall_s: float
    latencies_ms: list[float]
    ttft_ms: list[float]
    errors: int
    first_error: str | None
    warmup_ok: int  # warm-up requests answered correctly (they reach the ledger too)


class RawConnection:
    """A minimal keep-alive HTTP/1.1 client connection (Content-Length and chunked bodies).

    Much cheaper per request than a general client, so on a small machine more of the CPU is
    left to the servers under test.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 20
        )
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, payload: bytes) -> tuple[int, bytes, float | None]:
        """Send a prepared request; return (status, body, time the first body chunk arrived)."""
        if self.writer is None:
            await self.connect()
        assert self.reader is not None and self.writer is not None
        reader = self.reader
        self.writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        chunked = False
        close = False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
        first: float | None = None
        if chunked:
            parts = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass  # trailers
                    break
                data = await reader.readexactly(size + 2)
                if first is None:
                    first = time.perf_counter()
                parts.append(data[:-2])
            body = b"".join(parts)
        elif length is not None:
            body = await reader.readexactly(length) if length else b""
            first = time.perf_counter()
        else:  # read to EOF
            body = await reader.read()
            first = time.perf_counter()
            close = True
        if close:
            await self.close()
        return status, body, first


def check_body(status: int, body: bytes, stream: bool) -> None:
    if status != 200:
        raise ResponseError(f"HTTP {status}: {body[:200]!r}")
    if stream:
        if not body.endswith(DONE):
            raise ResponseError(f"stream did not end with [DONE]: ...{body[-200:]!r}")
    elif b'"choices"' not in body:
        raise ResponseError(f"not a chat completion: {body[:200]!r}")


async def run_raw(
    url: str, stream: bool, concurrency: int, requests: int, warmup: int, delay: float = 0.0
) -> LoadOutcome:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    body = request_body(stream, delay)
    payload = (
        f"POST {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Accept: {'text/event-stream' if stream else 'application/json'}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    conns = [RawConnection(host, int(port)) for _ in range(concurrency)]
    await asyncio.gather(*(c.connect() for c in conns))
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    warm_ok = 0
    first_error: list[str] = []
    sent = 0

    async def worker(conn: RawConnection, total: int, record: bool) -> None:
        nonlocal sent, errors, warm_ok
        while sent < total:
            sent += 1
            t0 = time.perf_counter()
            try:
                status, data, first = await conn.request(payload)
                check_body(status, data, stream)
            except (OSError, asyncio.IncompleteReadError, ValueError, ResponseError) as exc:
                errors += record
                if record and not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}")
                await conn.close()
                continue
            t1 = time.perf_counter()
            if record:
                latencies.append((t1 - t0) * 1000)
                if stream and first is not None:
                    ttfts.append((first - t0) * 1000)
            else:
                warm_ok += 1

    try:
        if warmup:
            await asyncio.gather(*(worker(c, warmup, False) for c in conns))
        sent = 0
        start = time.perf_counter()
        await asyncio.gather(*(worker(c, requests, True) for c in conns))
        wall = time.perf_counter() - start
    finally:
        await asyncio.gather(*(c.close() for c in conns))
    return LoadOutcome(
        requests, wall, latencies, ttfts, errors, first_error[0] if first_error else None, warm_ok
    )


async def run_httpx(
    url: str, stream: bool, concurrency: int, requests: int, warmup: int, delay: float = 0.0
) -> LoadOutcome:
    body = request_body(stream, delay)
    headers = {"content-type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    ttfts: list[float] = []
    errors = 0
    warm_ok = 0
    first_error: list[str] = []
    sent = 0
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=120, trust_env=False
    ) as client:

        async def one() -> tuple[int, bytes, float | None]:
            if not stream:
                resp = await client.post(PATH, content=body, headers=headers)
                return resp.status_code, resp.content, time.perf_counter()
            first = None
            parts = []
            async with client.stream("POST", PATH, content=body, headers=headers) as resp:
                async for chunk in resp.aiter_raw():
                    if first is None:
                        first = time.perf_counter()
                    parts.append(chunk)
            return resp.status_code, b"".join(parts), first

        async def worker(total: int, record: bool) -> None:
            nonlocal sent, errors, warm_ok
            while sent < total:
                sent += 1
                t0 = time.perf_counter()
                try:
                    status, data, first = await one()
                    check_body(status, data, stream)
                except (httpx.HTTPError, ResponseError) as exc:
                    errors += record
                    if record and not first_error:
                        first_error.append(f"{type(exc).__name__}: {exc}")
                    continue
                t1 = time.perf_counter()
                if record:
                    latencies.append((t1 - t0) * 1000)
                    if stream and first is not None:
                        ttfts.append((first - t0) * 1000)
                else:
                    warm_ok += 1

        if warmup:
            await asyncio.gather(*(worker(warmup, False) for _ in range(concurrency)))
        sent = 0
        start = time.perf_counter()
        await asyncio.gather(*(worker(requests, True) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return LoadOutcome(
        requests, wall, latencies, ttfts, errors, first_error[0] if first_error else None, warm_ok
    )


class Bench:
    def __init__(self, args: argparse.Namespace, stub: StubUpstream, proxy: Proxy) -> None:
        self.args = args
        self.stub = stub
        self.proxy = proxy
        self.proxied_ok = 0  # requests the proxy answered 200 (warm-ups included)
        self.loop_runner = asyncio.Runner(loop_factory=_loop_factory(args.loop))

    def close(self) -> None:
        self.loop_runner.close()

    def run(
        self, target: str, stream: bool, concurrency: int, requests: int, warmup: int
    ) -> RunResult:
        url = self.stub.base_url if target == "direct" else self.proxy.url
        runner = run_raw if self.args.client == "raw" else run_httpx
        stub_pid = self.stub.proc.pid  # type: ignore[union-attr]
        others = OtherLoad()
        cpu0 = {"stub": proc_cpu_seconds(stub_pid), "proxy": self.proxy.cpu_seconds()}
        load0 = time.process_time()
        out = self.loop_runner.run(
            asyncio.wait_for(
                runner(url, stream, concurrency, requests, warmup, self.args.upstream_delay),
                self.args.run_timeout,
            )
        )
        cpu = {
            "stub": proc_cpu_seconds(stub_pid) - cpu0["stub"],
            "proxy": self.proxy.cpu_seconds() - cpu0["proxy"],
            "loadgen": time.process_time() - load0,
        }
        other_cores = others.cores(sum(cpu.values()))
        if target == "proxy":
            self.proxied_ok += out.requests - out.errors + out.warmup_ok
        return RunResult(
            target,
            stream,
            concurrency,
            out.requests,
            out.errors,
            out.wall_s,
            out.latencies_ms,
            out.ttft_ms,
            cpu,
            out.first_error,
            other_cores,
            os.getloadavg()[0],
            self.proxy.workers,
        )


def _loop_factory(name: str) -> Any:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


# -- the benchmark ------------------------------------------------------------------------


def aggregate(runs: list[RunResult]) -> dict[str, float]:
    """Median over repeats of each figure (one run per repeat)."""
    return {
        "p50_ms": median([r.p(50) for r in runs]),
        "p99_ms": median([r.p(99) for r in runs]),
        "rps": median([r.rps for r in runs]),
        "ttft_p50_ms": median([r.ttft(50) for r in runs]) if runs[0].stream else float("nan"),
        "errors": sum(r.errors for r in runs),
        "cpu_ms_per_req": {
            proc: median([r.cpu_s.get(proc, 0.0) * 1000 / r.requests for r in runs])
            for proc in ("loadgen", "stub", "proxy")
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="measured requests per run")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 requests, 1 repeat")
    parser.add_argument(
        "--tail",
        action="store_true",
        help="the tail-latency case: --upstream-delay 0.1 --concurrency 32 --mode nonstream "
        "--requests 1500 --repeats 2 --lowload-requests 0 --workers 1 2",
    )
    parser.add_argument("--warmup", type=int, default=100, help="warm-up requests per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[32, 200])
    parser.add_argument("--mode", choices=["both", "nonstream", "stream"], default="both")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1],
        help="proxy processes (proxy.workers); each count is measured with a proxy of its own",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="direct/proxy pairs per config (alternating order); median reported",
    )
    parser.add_argument(
        "--lowload-requests",
        type=int,
        default=300,
        help="requests of the concurrency-1 run (0 skips it)",
    )
    parser.add_argument(
        "--upstream-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="stub waits S seconds before answering ([[delay:S]]), to model a "
        "real LLM's latency; 0 = answer at once (worst case for the proxy)",
    )
    parser.add_argument(
        "--client",
        choices=["raw", "httpx"],
        default="raw",
        help="load generator HTTP client (raw asyncio HTTP/1.1 is cheaper)",
    )
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds per run")
    add_wait_idle(parser)
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--keep-home", action="store_true", help="keep the proxy's ledger dir")
    args = parser.parse_args(argv)
    if args.tail:
        args.upstream_delay = 0.1
        args.concurrency = [32]
        args.mode = "nonstream"
        args.requests = 1500
        args.repeats = 2
        args.lowload_requests = 0
        args.workers = [1, 2]
    if args.quick:
        args.requests = min(args.requests, 300)
        args.repeats = 1
        args.warmup = min(args.warmup, 50)
        args.lowload_requests = min(args.lowload_requests, 100)
    return args


def measure(
    args: argparse.Namespace,
    stub: StubUpstream,
    workers: int,
    home: Path,
    runs_all: list[RunResult],
) -> dict[str, Any]:
    """Every configuration against one proxy of `workers` processes; then its ledger check."""
    modes = {"both": [False, True], "nonstream": [False], "stream": [True]}[args.mode]
    proxy = Proxy(home, stub.base_url + "/v1", workers).start()
    settle_s = proxy.settle()
    print(
        f"proxy with {workers} worker(s): settled (skills loaded, heap frozen) in {settle_s:.1f} s"
    )
    bench = Bench(args, stub, proxy)
    try:
        for target in ("direct", "proxy"):  # sanity: one request each way
            r = bench.run(target, False, 1, 1, 0)
            if r.errors:
                raise RuntimeError(f"{target} sanity request failed: {r.first_error}")

        def low_load(when: str) -> dict[str, Any]:
            print(f"  low load, {when}: concurrency 1, non-streaming", flush=True)
            low_runs: dict[str, RunResult] = {}
            for target in ("direct", "proxy"):
                r = bench.run(target, False, 1, args.lowload_requests, min(args.warmup, 50))
                runs_all.append(r)
                low_runs[target] = r
            d, p = low_runs["direct"], low_runs["proxy"]
            return {
                "when": when,
                "workers": workers,
                "requests": args.lowload_requests,
                "direct": d.summary(),
                "proxy": p.summary(),
                "added_p50_ms": p.p(50) - d.p(50),
                "added_p99_ms": p.p(99) - d.p(99),
            }

        lows: list[dict[str, Any]] = []
        if args.lowload_requests:
            lows.append(low_load("fresh proxy"))
        rows = []
        for stream in modes:
            for conc in args.concurrency:
                name = f"{'stream' if stream else 'non-stream'} c={conc} w={workers}"
                direct_runs: list[RunResult] = []
                proxy_runs: list[RunResult] = []
                for rep in range(args.repeats):
                    order = ("direct", "proxy") if rep % 2 == 0 else ("proxy", "direct")
                    for target in order:
                        r = bench.run(target, stream, conc, args.requests, args.warmup)
                        runs_all.append(r)
                        (direct_runs if target == "direct" else proxy_runs).append(r)
                        print(
                            f"  {name:<22} {target:<6} rep {rep + 1}: "
                            f"p50 {r.p(50):7.2f} ms  p99 {r.p(99):7.2f} ms  "
                            f"{r.rps:8.1f} req/s  proxy CPU "
                            f"{r.cpu_s['proxy'] * 1000 / r.requests:5.3f} ms/req  errors "
                            f"{r.errors}  other load {r.other_cores:.2f} cores  "
                            f"loadavg {r.loadavg:.2f}"
                            + (f"  ({r.first_error})" if r.first_error else ""),
                            flush=True,
                        )
                d, p = aggregate(direct_runs), aggregate(proxy_runs)
                rows.append(
                    {
                        "config": name,
                        "stream": stream,
                        "concurrency": conc,
                        "workers": workers,
                        "direct": d,
                        "proxy": p,
                        "added_p50_ms": p["p50_ms"] - d["p50_ms"],
                        "added_p99_ms": p["p99_ms"] - d["p99_ms"],
                        "throughput_ratio": p["rps"] / d["rps"],
                        "other_cores": max(r.other_cores for r in direct_runs + proxy_runs),
                        "loadavg": median([r.loadavg for r in direct_runs + proxy_runs]),
                        "runs": [r.summary() for r in direct_runs + proxy_runs],
                    }
                )
        if args.lowload_requests:
            lows.append(low_load("after the bursts (upstream pool full of idle connections)"))
        health = proxy.health()
    finally:
        bench.close()
        proxy_rc = proxy.stop()
    _, counted = query(LedgerPaths(home), "select count(*) from turns")
    turns = int(counted[0][0])
    ledger = {
        "turns": turns,
        "proxied": bench.proxied_ok,
        "ok": turns == bench.proxied_ok,
        "health": health["ledger"],
        "heap": health.get("heap"),
        "proxy_exit_code": proxy_rc,
    }
    print(
        f"ledger (w={workers}): {turns:,} turns recorded, {bench.proxied_ok:,} requests proxied "
        f"-> {'OK' if ledger['ok'] else 'MISMATCH'}  (one worker's /healthz before stop: "
        f"recorded={health['ledger']['recorded']}, failed={health['ledger']['failed']}, "
        f"heap={health.get('heap')}; exit code {proxy_rc})\n"
    )
    return {
        "workers": workers,
        "settle_s": settle_s,
        "configs": rows,
        "low_load": lows,
        "ledger": ledger,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_summary()
    print(
        f"proxy overhead benchmark — {machine['cores']} cores ({machine['cpu']}), "
        f"Python {machine['python']}, code {machine['revision']}"
    )
    print(
        f"load: {args.requests} requests per run after {args.warmup} warm-up, "
        f"concurrency {args.concurrency}, proxy workers {args.workers}, {args.repeats} "
        f"direct/proxy pair(s) per config (alternating order, median reported), "
        f"client={args.client}/{args.loop}"
    )
    print(
        f"prompt {prompt(args.upstream_delay)!r} (stub replies with 20 words; streaming = "
        "23 SSE events)"
    )
    settle(args.wait_idle)
    warning = load_warning()
    if warning:
        print(warning)
    print(f"load average at start: {' / '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)")
    print(
        "NOTE: stub, proxy and this load generator share the same "
        f"{machine['cores']} cores; at high concurrency the run is CPU-bound and the "
        "throughput ratio mostly measures the proxy's CPU cost per request.\n"
    )

    home_root = Path(tempfile.mkdtemp(prefix="metaclaw-bench-proxy-"))
    results: dict[str, Any] = {"machine": machine, "args": vars(args), "proxies": []}
    runs_all: list[RunResult] = []
    with StubUpstream() as stub:
        for workers in args.workers:
            results["proxies"].append(
                measure(args, stub, workers, home_root / f"w{workers}", runs_all)
            )
    proxies = results["proxies"]
    rows = [e for m in proxies for e in m["configs"]]
    lows = [low for m in proxies for low in m["low_load"]]
    results["configs"] = rows
    results["low_load"] = lows
    report(rows, lows)

    noisiest = max((r.other_cores for r in runs_all), default=0.0)
    results["max_other_load_cores"] = noisiest
    results["loadavg_end"] = os.getloadavg()
    print(
        f"other processes' CPU during the runs: at most {noisiest:.2f} cores; load average "
        f"now {' / '.join(f'{x:.2f}' for x in os.getloadavg())}"
        + ("  (NOISY: rerun on an idle machine)" if noisiest > 0.25 else "")
    )

    # -- verdict ----------------------------------------------------------------------------
    errors = sum(r.errors for r in runs_all)
    ledger_ok = all(m["ledger"]["ok"] for m in proxies)
    fails = []
    for e in rows:
        if e["added_p50_ms"] > 2.0:
            fails.append(f"{e['config']} added p50 {e['added_p50_ms']:.2f} ms > 2")
        if e["added_p99_ms"] > 10.0:
            fails.append(f"{e['config']} added p99 {e['added_p99_ms']:.2f} ms > 10")
        if e["throughput_ratio"] < 0.9:
            fails.append(f"{e['config']} throughput {e['throughput_ratio']:.2f}x < 0.9x")
        cpu = e["proxy"]["cpu_ms_per_req"]["proxy"]
        if not e["stream"] and cpu > 0.3:
            fails.append(f"{e['config']} proxy CPU {cpu:.3f} ms/req > 0.3")
    for low in lows:
        label = f"c=1 w={low['workers']} {low['when'].split(' (')[0]}"
        if low["added_p50_ms"] > 2.0:
            fails.append(f"{label} added p50 {low['added_p50_ms']:.2f} ms > 2")
        if low["added_p99_ms"] > 10.0:
            fails.append(f"{label} added p99 {low['added_p99_ms']:.2f} ms > 10")
    if errors:
        fails.append(f"{errors} request errors")
    if not ledger_ok:
        fails.append("ledger count mismatch")
    verdict = "PASS" if not fails else "FAIL: " + "; ".join(fails)
    print(
        f"\nVERDICT (added p50 <= 2 ms, p99 <= 10 ms, throughput >= 0.9x, proxy CPU <= 0.3 ms "
        f"per non-streaming request, 0 errors, ledger complete; on {machine['cores']} shared "
        f"cores): {verdict}"
    )
    results["verdict"] = verdict
    if args.json:
        write_json(args.json, results)
    if args.keep_home:
        print(f"proxy homes kept under {home_root}")
    else:
        shutil.rmtree(home_root, ignore_errors=True)
    return 1 if errors or not ledger_ok else 0


def report(rows: list[dict[str, Any]], lows: list[dict[str, Any]]) -> None:
    """The tables: latency and throughput, TTFT, CPU per request, scaling with workers."""
    print("\nresults (median over repeats; latency = full response incl. whole SSE body)\n")
    headers = [
        "config",
        "direct p50",
        "direct p99",
        "proxy p50",
        "proxy p99",
        "added p50",
        "added p99",
        "direct rps",
        "proxy rps",
        "ratio",
        "proxy CPU ms/req",
        "loadavg",
        "errors d/p",
    ]
    table = []
    for e in rows:
        d, p = e["direct"], e["proxy"]
        table.append(
            [
                e["config"],
                d["p50_ms"],
                d["p99_ms"],
                p["p50_ms"],
                p["p99_ms"],
                e["added_p50_ms"],
                e["added_p99_ms"],
                d["rps"],
                p["rps"],
                e["throughput_ratio"],
                p["cpu_ms_per_req"]["proxy"],
                e["loadavg"],
                f"{d['errors']}/{p['errors']}",
            ]
        )
    for low in lows:
        d, p = low["direct"], low["proxy"]
        label = "fresh" if low["when"] == "fresh proxy" else "after bursts"
        table.append(
            [
                f"non-stream c=1 w={low['workers']} {label}",
                d["p50_ms"],
                d["p99_ms"],
                p["p50_ms"],
                p["p99_ms"],
                low["added_p50_ms"],
                low["added_p99_ms"],
                d["rps"],
                p["rps"],
                p["rps"] / d["rps"],
                p["cpu_s"]["proxy"] * 1000 / p["requests"],
                float("nan"),
                f"{d['errors']}/{p['errors']}",
            ]
        )
    print_table(headers, table)
    print("(latencies in ms; rps = successful requests per second; loadavg: 1-minute, median)")

    stream_rows = [e for e in rows if e["stream"]]
    if stream_rows:
        print("\nstreaming time to first body chunk (TTFT, ms, p50)")
        print_table(
            ["config", "direct", "proxy", "added"],
            [
                [
                    e["config"],
                    e["direct"]["ttft_p50_ms"],
                    e["proxy"]["ttft_p50_ms"],
                    e["proxy"]["ttft_p50_ms"] - e["direct"]["ttft_p50_ms"],
                ]
                for e in stream_rows
            ],
        )

    print("\nCPU per request (ms of CPU time, median over repeats; proxy = all its processes)")
    print_table(
        ["config", "target", "loadgen", "stub", "proxy", "total"],
        [
            [
                e["config"],
                t,
                e[t]["cpu_ms_per_req"]["loadgen"],
                e[t]["cpu_ms_per_req"]["stub"],
                e[t]["cpu_ms_per_req"]["proxy"],
                sum(e[t]["cpu_ms_per_req"].values()),
            ]
            for e in rows
            for t in ("direct", "proxy")
        ],
        digits=3,
    )

    counts = sorted({e["workers"] for e in rows})
    if len(counts) > 1:
        print("\nscaling with proxy workers (proxied requests/s; same load, same run)")
        base = counts[0]
        by_key = {(e["stream"], e["concurrency"], e["workers"]): e for e in rows}
        scale_rows = []
        for (stream, conc, _workers), e in sorted(by_key.items()):
            first = by_key.get((stream, conc, base))
            scale_rows.append(
                [
                    e["config"],
                    e["proxy"]["rps"],
                    e["proxy"]["rps"] / first["proxy"]["rps"] if first else float("nan"),
                    e["direct"]["rps"],
                    e["added_p50_ms"],
                    e["added_p99_ms"],
                    e["proxy"]["cpu_ms_per_req"]["proxy"],
                ]
            )
        print_table(
            [
                "config",
                "proxy rps",
                f"vs w={base}",
                "direct rps",
                "added p50",
                "added p99",
                "proxy CPU ms/req",
            ],
            scale_rows,
        )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
