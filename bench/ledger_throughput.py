"""Ledger benchmarks: durable append throughput, group commit vs. one fsync per row, how soon a
durable turn is visible to queries, and ingest/compaction speed.

    .venv/bin/python bench/ledger_throughput.py            # defaults (~1-2 minutes)
    .venv/bin/python bench/ledger_throughput.py --quick    # smoke run

Everything runs in this one process (the WAL writer is a thread, as in the proxy) in a temp
directory on the filesystem named by --dir (default: the system temp dir); the filesystem type
is printed because fsync cost depends on it entirely (tmpfs fsync is free).

Targets: >= 5,000 durable turns/s through the append path; a durable turn visible to
`metaclaw.ledger.connect` within 2 s (p50 and max), never missing or doubled once visible.
Exit status 1 only on a correctness failure (errors, lost or doubled turns); a missed
performance target shows in the verdict line.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    OtherLoad,
    TurnFactory,
    add_wait_idle,
    filesystem_of,
    load_warning,
    machine_summary,
    median,
    new_id,
    percentile,
    print_table,
    settle,
    write_json,
)
from metaclaw.config import LedgerPaths, LedgerSettings
from metaclaw.ledger import connect, ingest
from metaclaw.ledger.lookup import find_turn
from metaclaw.ledger.schemas import TURNS
from metaclaw.ledger.wal import WalWriter, list_segments

TABLE = TURNS.name
TARGET_TPS = 5000.0
TARGET_VISIBLE_S = 2.0
MARKER_GAP_S = 0.05  # pause between visibility markers


def _writer(paths: LedgerPaths, **overrides: Any) -> WalWriter:
    s = LedgerSettings()
    opts: dict[str, Any] = {
        "rotate_bytes": s.wal_rotate_bytes,
        "rotate_s": s.wal_rotate_s,
        "queue_max": s.wal_queue_max,
        "batch_max": s.wal_batch_max,
    }
    opts.update(overrides)
    return WalWriter(paths.wal, **opts).start()


def _ms(values: list[float]) -> list[float]:
    return [v * 1000 for v in values]


# -- 1 & 2: append throughput --------------------------------------------------------------


def append_threads(
    paths: LedgerPaths,
    factory: TurnFactory,
    rows: int,
    producers: int,
    first: int = 0,
    **writer_opts: Any,
) -> dict[str, Any]:
    """`producers` threads, each: build a row, submit it, wait until durable, repeat."""
    wal = _writer(paths, **writer_opts)
    waits = [0.0] * rows
    counter = itertools.count()
    failures: list[BaseException] = []
    barrier = threading.Barrier(producers + 1)

    def producer() -> None:
        barrier.wait()
        while True:
            i = next(counter)  # atomic under the GIL
            if i >= rows:
                return
            row = factory.row(first + i)
            t0 = time.perf_counter()
            try:
                wal.submit(TABLE, row).result(60)
            except Exception as exc:
                failures.append(exc)
            waits[i] = time.perf_counter() - t0

    threads = [threading.Thread(target=producer, daemon=True) for _ in range(producers)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    stats = wal.stats
    wal.close()
    return _append_result(f"{producers} threads", rows, elapsed, stats, _ms(waits), failures)


def append_asyncio(
    paths: LedgerPaths,
    factory: TurnFactory,
    rows: int,
    tasks: int,
    first: int = 0,
    loop: str = "uvloop",
) -> dict[str, Any]:
    """`tasks` coroutines on one event loop using `append_async`, like the proxy."""
    wal = _writer(paths)
    waits = [0.0] * rows
    failures: list[BaseException] = []

    async def main() -> float:
        counter = itertools.count()

        async def worker() -> None:
            while True:
                i = next(counter)
                if i >= rows:
                    return
                row = factory.row(first + i)
                t0 = time.perf_counter()
                try:
                    await wal.append_async(TABLE, row, 60)
                except Exception as exc:
                    failures.append(exc)
                waits[i] = time.perf_counter() - t0

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        return time.perf_counter() - start

    if loop == "uvloop":
        import uvloop

        elapsed = uvloop.run(main())
    else:
        elapsed = asyncio.run(main())
    stats = wal.stats
    wal.close()
    return _append_result(
        f"{tasks} coroutines ({loop})", rows, elapsed, stats, _ms(waits), failures
    )


def _append_result(
    name: str,
    rows: int,
    elapsed: float,
    stats: Any,
    waits_ms: list[float],
    failures: list[BaseException],
) -> dict[str, Any]:
    return {
        "variant": name,
        "rows": rows,
        "seconds": elapsed,
        "turns_per_s": rows / elapsed,
        "fsyncs": stats.fsyncs,
        "rows_per_fsync": stats.records_written / max(stats.fsyncs, 1),
        "wait_p50_ms": percentile(waits_ms, 50),
        "wait_p99_ms": percentile(waits_ms, 99),
        "wait_max_ms": percentile(waits_ms, 100),
        "failures": len(failures),
        "first_failure": repr(failures[0]) if failures else None,
    }


# -- 3: visibility --------------------------------------------------------------------------


def _ingest_loop(home: str, interval: float, stop: Any, out: Any) -> None:
    """Run ingest repeatedly until `stop` is set (used as a thread or as a process)."""
    paths = LedgerPaths(Path(home))
    settings = LedgerSettings()
    runs = segments = rows = compacted = errors = 0
    while not stop.is_set():
        try:
            report = ingest(paths, settings)
            runs += 1
            segments += report.segments
            rows += report.total_rows
            compacted += report.compacted_files
        except Exception as exc:  # report, keep going
            errors += 1
            print(f"  ingest error: {type(exc).__name__}: {exc}", flush=True)
        stop.wait(interval)
    out.put(
        {
            "ingests": runs,
            "segments_ingested": segments,
            "rows_ingested": rows,
            "files_compacted": compacted,
            "ingest_errors": errors,
        }
    )


def visibility(
    home: Path,
    factory: TurnFactory,
    *,
    seconds: float,
    rate: float,
    with_ingest: bool,
    rotate_s: float,
    ingest_interval: float,
    ingest_in: str,
    gap_s: float,
    poll_timeout: float,
) -> dict[str, Any]:
    """Append markers while a background load runs; measure append-returned -> visible."""
    paths = LedgerPaths(home)
    wal = _writer(paths, rotate_s=rotate_s)
    stop = threading.Event()
    bg_errors: list[BaseException] = []
    bg_count = [0]

    def background() -> None:
        tick = 0.01
        per_tick = max(1, round(rate * tick))
        next_t = time.perf_counter()
        i = 10_000_000
        while not stop.is_set():
            for _ in range(per_tick):
                fut = wal.submit(TABLE, factory.row(i))
                fut.add_done_callback(lambda f: f.exception() and bg_errors.append(f.exception()))
                i += 1
            bg_count[0] += per_tick
            next_t += tick
            delay = next_t - time.perf_counter()
            if delay > 0:
                time.sleep(delay)

    ingest_stop: Any = None
    ingest_out: Any = None
    ingester: Any = None
    if with_ingest:
        if ingest_in == "process":
            ctx = multiprocessing.get_context("spawn")
            ingest_stop, ingest_out = ctx.Event(), ctx.Queue()
            ingester = ctx.Process(
                target=_ingest_loop, args=(str(home), ingest_interval, ingest_stop, ingest_out)
            )
        else:
            import queue

            ingest_stop, ingest_out = threading.Event(), queue.Queue()
            ingester = threading.Thread(
                target=_ingest_loop,
                args=(str(home), ingest_interval, ingest_stop, ingest_out),
                daemon=True,
            )
        ingester.start()
    bg = threading.Thread(target=background, daemon=True)
    bg.start()
    time.sleep(min(1.0, seconds / 4))  # let the load settle

    seen: list[str] = []
    delays: list[float] = []
    polls_per_marker: list[int] = []
    query_times: list[float] = []
    violations: list[str] = []
    missing = 0
    sql = (
        f"SELECT turn_id, count(*) FROM {TABLE} WHERE turn_id IN (SELECT unnest($ids)) "
        "GROUP BY turn_id"
    )
    deadline = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < deadline:
        marker = new_id()
        wal.append(TABLE, [factory.row(n, turn_id=marker)], timeout=30)
        appended = time.perf_counter()
        polls = 0
        while True:
            polls += 1
            q0 = time.perf_counter()
            con = connect(paths)
            try:
                counts = dict(con.execute(sql, {"ids": [*seen, marker]}).fetchall())
            finally:
                con.close()
            now = time.perf_counter()
            query_times.append(now - q0)
            for old in seen:
                if counts.get(old, 0) != 1:
                    violations.append(f"marker {old} seen {counts.get(old, 0)} times")
            found = counts.get(marker, 0)
            if found:
                if found != 1:
                    violations.append(f"new marker {marker} seen {found} times")
                delays.append(now - appended)
                break
            if now - appended > poll_timeout:
                missing += 1
                break
        polls_per_marker.append(polls)
        seen.append(marker)
        n += 1
        time.sleep(gap_s)

    stop.set()
    bg.join()
    bg_elapsed = seconds + min(1.0, seconds / 4)
    ingest_stats: dict[str, Any] = {}
    if ingester is not None:
        ingest_stop.set()
        ingest_stats = ingest_out.get(timeout=300)
        ingester.join(60)
    wal.close()
    # A last look after everything settled (and, with ingest, after a final ingest).
    if with_ingest:
        ingest(paths, LedgerSettings())
    con = connect(paths)
    try:
        final = dict(con.execute(sql, {"ids": seen}).fetchall())
        total = con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
    finally:
        con.close()
    final_bad = sum(1 for m in seen if final.get(m, 0) != 1)
    expected_total = bg_count[0] + len(seen)
    return {
        "phase": "with ingest" if with_ingest else "WAL only",
        "markers": len(seen),
        "delay_p50_ms": percentile(_ms(delays), 50),
        "delay_p90_ms": percentile(_ms(delays), 90),
        "delay_max_ms": percentile(_ms(delays), 100),
        "markers_needing_2+_polls": sum(1 for p in polls_per_marker if p > 1),
        "query_p50_ms": percentile(_ms(query_times), 50),
        "query_max_ms": percentile(_ms(query_times), 100),
        "queries": len(query_times),
        "missing": missing,
        "violations": len(violations),
        "violation_examples": violations[:5],
        "final_markers_not_exactly_once": final_bad,
        "background_rows": bg_count[0],
        "background_rate": bg_count[0] / bg_elapsed,
        "background_errors": len(bg_errors),
        "rows_total": total,
        "rows_expected": expected_total,
        **ingest_stats,
    }


# -- 4: ingest and compaction ---------------------------------------------------------------


def timed_count(paths: LedgerPaths, repeats: int = 3, budget_s: float = 5.0) -> tuple[float, int]:
    """Median seconds of connect + `select count(*) from turns` (fewer repeats when slow)."""
    times: list[float] = []
    count = -1
    spent = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        con = connect(paths)
        try:
            count = con.execute(f"select count(*) from {TABLE}").fetchone()[0]
        finally:
            con.close()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
        if spent > budget_s:
            break
    return median(times), int(count)


def ingest_bench(
    paths: LedgerPaths,
    factory: TurnFactory,
    expected_rows: int,
    small_batches: int,
    small_rows: int,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    wal_bytes = sum(p.stat().st_size for p in list_segments(paths.wal))
    out["wal_segments"] = len(list_segments(paths.wal))
    out["wal_mb"] = wal_bytes / 1e6
    t, count = timed_count(paths)
    out["count_wal_only_s"], out["count_wal_only"] = t, count

    no_compact = LedgerSettings(compact_min_files=10**9)
    t0 = time.perf_counter()
    report = ingest(paths, no_compact)
    out["ingest_s"] = time.perf_counter() - t0
    out["ingest_rows"] = report.total_rows
    out["ingest_rows_per_s"] = report.total_rows / out["ingest_s"]
    out["ingest_mb_per_s"] = wal_bytes / 1e6 / out["ingest_s"]
    t, count = timed_count(paths)
    out["count_1_file_s"], out["count_1_file"] = t, count

    # Small ingests (one Parquet file each), as a live system makes every few seconds.
    small_times = []
    first = 50_000_000
    for b in range(small_batches):
        with WalWriter(paths.wal) as wal:
            wal.append(TABLE, [factory.row(first + b * small_rows + i) for i in range(small_rows)])
        t0 = time.perf_counter()
        ingest(paths, no_compact)
        small_times.append(time.perf_counter() - t0)
    out["small_ingest_rows"] = small_rows
    out["small_ingest_s_median"] = median(small_times)
    files = small_batches + 1
    t, count = timed_count(paths)
    out[f"count_{files}_files_s"], out[f"count_{files}_files"] = t, count
    out["files_before_compaction"] = files

    t0 = time.perf_counter()
    report = ingest(paths, LedgerSettings(compact_min_files=2))
    out["compaction_s"] = time.perf_counter() - t0
    out["compacted_files"] = report.compacted_files
    t, count = timed_count(paths)
    out["count_compacted_s"], out["count_compacted"] = t, count
    # A live ledger always has some WAL: the view then anti-joins WAL ids against Parquet ids.
    with WalWriter(paths.wal) as wal:
        wal.append(TABLE, [factory.row(first - 1)])
    t, count = timed_count(paths)
    out["count_compacted_plus_wal_s"], out["count_compacted_plus_wal"] = t, count
    out["expected_rows"] = expected_rows + small_batches * small_rows
    return out


# -- 5: point lookups (POST /v1/feedback) ---------------------------------------------------


def _view_lookup(paths: LedgerPaths, turn_id: str) -> str | None:
    """What `POST /v1/feedback` did before: a full connection (every WAL row decoded), then
    SQL over the view."""
    con = connect(paths)
    try:
        row = con.execute(
            "SELECT session_id FROM turns WHERE turn_id = ? LIMIT 1", [turn_id]
        ).fetchone()
    finally:
        con.close()
    return row[0] if row else None


def _point_lookup(paths: LedgerPaths, turn_id: str) -> str | None:
    ref = find_turn(paths, turn_id)
    return ref.session_id if ref else None


def lookup_bench(
    home: Path, factory: TurnFactory, parquet_rows: int, wal_mb: float, lookups: int
) -> dict[str, Any]:
    """A ledger of `parquet_rows` ingested turns plus `wal_mb` of not-yet-ingested WAL; time
    the feedback endpoint's turn lookup both ways on the same ids (in the WAL, in Parquet,
    unknown) and check that they agree."""
    paths = LedgerPaths(home)
    first = 70_000_000
    with WalWriter(paths.wal) as wal:
        wal.append(TABLE, [factory.row(first + i) for i in range(parquet_rows)], timeout=120)
    in_parquet = [
        r[0]
        for r in connect(paths)
        .execute(f"SELECT turn_id FROM {TABLE} USING SAMPLE {lookups} ROWS")
        .fetchall()
    ]
    ingest(paths, LedgerSettings())
    in_wal: list[str] = []
    with WalWriter(paths.wal, rotate_s=3600) as wal:
        i = 0
        while sum(p.stat().st_size for p in list_segments(paths.wal)) < wal_mb * 1e6:
            batch = [factory.row(first + parquet_rows + i + j) for j in range(2000)]
            wal.append(TABLE, batch, timeout=120)
            in_wal += [r["turn_id"] for r in batch[:: max(1, 2000 * 30 // lookups)]]
            i += len(batch)
    ids = [*in_parquet[: lookups // 2], *in_wal[: lookups // 2], "no-such-turn"]
    out: dict[str, Any] = {
        "parquet_rows": parquet_rows,
        "wal_mb": sum(p.stat().st_size for p in list_segments(paths.wal)) / 1e6,
        "wal_rows": i,
        "lookups": len(ids),
    }
    disagree = 0
    for name, fn in (("view", _view_lookup), ("point", _point_lookup)):
        times, cpu = [], []
        for tid in ids:
            t0, c0 = time.perf_counter(), time.thread_time()
            fn(paths, tid)
            times.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
        out[f"{name}_ms_p50"] = percentile(_ms(times), 50)
        out[f"{name}_ms_max"] = percentile(_ms(times), 100)
        out[f"{name}_python_cpu_ms_p50"] = percentile(_ms(cpu), 50)
    for tid in ids:
        disagree += _view_lookup(paths, tid) != _point_lookup(paths, tid)
    out["disagreements"] = disagree
    out["speedup_p50"] = out["view_ms_p50"] / max(out["point_ms_p50"], 1e-6)
    return out


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows per throughput variant")
    parser.add_argument("--producers", type=int, default=32, help="producer threads")
    parser.add_argument("--tasks", type=int, default=200, help="coroutines (asyncio variant)")
    parser.add_argument(
        "--baseline-rows", type=int, default=2000, help="rows of the one-fsync-per-row baseline"
    )
    parser.add_argument(
        "--vis-seconds", type=float, default=20.0, help="duration of each visibility phase"
    )
    parser.add_argument(
        "--vis-rate",
        type=float,
        default=500.0,
        help="background turns/s during the visibility phases",
    )
    parser.add_argument(
        "--vis-rotate-s",
        type=float,
        default=1.0,
        help="WAL rotation during the visibility phases (default setting: 5 s; "
        "shorter exercises more WAL->Parquet moves)",
    )
    parser.add_argument(
        "--ingest-interval",
        type=float,
        default=0.5,
        help="pause between ingests in the visibility phase",
    )
    parser.add_argument(
        "--ingest-in",
        choices=["thread", "process"],
        default="thread",
        help="run the ingest loop in a thread of this process or its own process",
    )
    parser.add_argument(
        "--small-batches",
        type=int,
        default=7,
        help="extra small ingests before the compaction measurement",
    )
    parser.add_argument("--small-rows", type=int, default=2000)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to put the temp ledger dirs (default: system temp dir)",
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["append", "baseline", "visibility", "ingest", "lookup"],
    )
    parser.add_argument("--lookup-parquet-rows", type=int, default=200_000)
    parser.add_argument("--lookup-wal-mb", type=float, default=50.0)
    parser.add_argument("--lookups", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="smoke run with small sizes")
    add_wait_idle(parser)
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temp ledger dirs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = min(args.rows, 5000)
        args.baseline_rows = min(args.baseline_rows, 500)
        args.vis_seconds = min(args.vis_seconds, 5.0)
        args.small_batches = min(args.small_batches, 3)
        args.small_rows = min(args.small_rows, 500)
        args.lookup_parquet_rows = min(args.lookup_parquet_rows, 20_000)
        args.lookup_wal_mb = min(args.lookup_wal_mb, 10.0)
        args.lookups = min(args.lookups, 10)

    root = Path(tempfile.mkdtemp(prefix="metaclaw-bench-ledger-", dir=args.dir))
    machine = machine_summary()
    print(
        f"ledger benchmark — {machine['cores']} cores ({machine['cpu']}), "
        f"Python {machine['python']}, code {machine['revision']}"
    )
    print(f"ledger dirs under {root} ({filesystem_of(root)})")
    settle(args.wait_idle)
    warning = load_warning()
    if warning:
        print(warning)
    print()
    others = OtherLoad()
    cpu0 = time.process_time()
    factory = TurnFactory()
    results: dict[str, Any] = {
        "machine": machine,
        "args": {k: str(v) for k, v in vars(args).items()},
        "filesystem": filesystem_of(root),
    }
    verdicts: list[str] = []
    rc = 0
    try:
        main_paths = LedgerPaths(root / "append")
        if "append" not in args.skip:
            print(
                f"1. durable appends: {args.rows:,} turns per variant (~1.5-2 KB request JSON "
                "each), every append waits for its fsync",
                flush=True,
            )
            runs = [append_threads(main_paths, factory, args.rows, args.producers)]
            runs.append(
                append_asyncio(
                    main_paths, factory, args.rows, args.tasks, first=args.rows, loop=args.loop
                )
            )
            results["append"] = runs
        else:
            runs = []
        if "baseline" not in args.skip:
            print(
                f"2. baseline: {args.baseline_rows:,} turns, one fsync per row "
                "(writer batch_max=1, no group commit)",
                flush=True,
            )
            base = append_threads(
                LedgerPaths(root / "baseline"),
                factory,
                args.baseline_rows,
                args.producers,
                batch_max=1,
            )
            base["variant"] = f"{args.producers} threads, batch_max=1"
            runs.append(base)
            results["baseline"] = base
        if runs:
            print()
            print_table(
                [
                    "variant",
                    "turns",
                    "seconds",
                    "turns/s",
                    "fsyncs",
                    "rows/fsync",
                    "wait p50 ms",
                    "wait p99 ms",
                    "wait max ms",
                    "failures",
                ],
                [
                    [
                        r["variant"],
                        r["rows"],
                        r["seconds"],
                        r["turns_per_s"],
                        r["fsyncs"],
                        r["rows_per_fsync"],
                        r["wait_p50_ms"],
                        r["wait_p99_ms"],
                        r["wait_max_ms"],
                        r["failures"],
                    ]
                    for r in runs
                ],
            )
            group = [r for r in runs if "batch_max=1" not in r["variant"]]
            if group and "baseline" in results:
                ratio = group[0]["turns_per_s"] / results["baseline"]["turns_per_s"]
                results["group_commit_ratio"] = ratio
                print(f"group commit vs one fsync per row: {ratio:.1f}x")
            if group:
                worst = min(r["turns_per_s"] for r in group)
                fails = sum(r["failures"] for r in runs)
                ok = worst >= TARGET_TPS and not fails
                verdicts.append(
                    f"append throughput: {'PASS' if ok else 'FAIL'} "
                    f"(slowest variant {worst:,.0f} turns/s, target >= "
                    f"{TARGET_TPS:,.0f}; {fails} failed appends)"
                )
                print(verdicts[-1])
                rc |= 1 if fails else 0  # exit status: correctness only
            print(flush=True)

        if "visibility" not in args.skip:
            print(
                f"3. visibility: a marker turn every ~{MARKER_GAP_S * 1000:.0f} ms while a "
                "background load appends "
                f"{args.vis_rate:.0f} turns/s, {args.vis_seconds:.0f} s per phase "
                f"(WAL rotation {args.vis_rotate_s} s; ingest every {args.ingest_interval} s "
                f"in a {args.ingest_in})",
                flush=True,
            )
            phases = []
            for with_ingest in (False, True):
                phases.append(
                    visibility(
                        root / ("vis-ingest" if with_ingest else "vis-wal"),
                        factory,
                        seconds=args.vis_seconds,
                        rate=args.vis_rate,
                        with_ingest=with_ingest,
                        rotate_s=args.vis_rotate_s,
                        ingest_interval=args.ingest_interval,
                        ingest_in=args.ingest_in,
                        gap_s=MARKER_GAP_S,
                        poll_timeout=10.0,
                    )
                )
            results["visibility"] = phases
            print()
            print_table(
                [
                    "phase",
                    "markers",
                    "delay p50 ms",
                    "delay p90 ms",
                    "delay max ms",
                    "2+ polls",
                    "query p50 ms",
                    "query max ms",
                    "missing",
                    "violations",
                    "bg turns/s",
                    "rows ok",
                ],
                [
                    [
                        p["phase"],
                        p["markers"],
                        p["delay_p50_ms"],
                        p["delay_p90_ms"],
                        p["delay_max_ms"],
                        p["markers_needing_2+_polls"],
                        p["query_p50_ms"],
                        p["query_max_ms"],
                        p["missing"],
                        p["violations"] + p["final_markers_not_exactly_once"],
                        p["background_rate"],
                        f"{p['rows_total']:,}/{p['rows_expected']:,}",
                    ]
                    for p in phases
                ],
            )
            ing = phases[1]
            print(
                f"with ingest: {ing.get('ingests', 0)} ingests moved "
                f"{ing.get('segments_ingested', 0)} segments / "
                f"{ing.get('rows_ingested', 0):,} rows to Parquet, "
                f"{ing.get('files_compacted', 0)} files compacted, "
                f"{ing.get('ingest_errors', 0)} ingest errors"
            )
            worst_max = max(p["delay_max_ms"] for p in phases)
            worst_p50 = max(p["delay_p50_ms"] for p in phases)
            bad = sum(
                p["missing"]
                + p["violations"]
                + p["final_markers_not_exactly_once"]
                + p["background_errors"]
                + (p["rows_total"] != p["rows_expected"])
                for p in phases
            )
            ok = worst_max <= TARGET_VISIBLE_S * 1000 and not bad
            verdicts.append(
                f"visibility: {'PASS' if ok else 'FAIL'} (p50 {worst_p50:.0f} ms, "
                f"max {worst_max:.0f} ms, target <= {TARGET_VISIBLE_S * 1000:.0f} "
                f"ms; {bad} missing/doubled/lost)"
            )
            print(verdicts[-1], flush=True)
            rc |= 1 if bad else 0
            print()

        if "ingest" not in args.skip and "append" not in args.skip:
            expected = args.rows * 2
            print(
                f"4. ingest of the accumulated WAL ({expected:,} turns from step 1) and "
                f"compaction of {args.small_batches + 1} files",
                flush=True,
            )
            ing = ingest_bench(main_paths, factory, expected, args.small_batches, args.small_rows)
            results["ingest"] = ing
            files = ing["files_before_compaction"]
            print(
                f"\nWAL: {ing['wal_segments']} segments, {ing['wal_mb']:.0f} MB; ingest "
                f"{ing['ingest_rows']:,} rows in {ing['ingest_s']:.2f} s = "
                f"{ing['ingest_rows_per_s']:,.0f} rows/s ({ing['ingest_mb_per_s']:.0f} MB/s "
                "of WAL)"
            )
            print(
                f"small ingests ({ing['small_ingest_rows']:,} rows, ledger already holds "
                f"{expected:,}): {ing['small_ingest_s_median']:.3f} s each (median)"
            )
            print(
                f"compaction of {files} files: {ing['compaction_s']:.2f} s "
                f"({ing['compacted_files']} files merged)\n"
            )
            print_table(
                ["ledger state", "count(*)", "connect+query s"],
                [
                    [
                        "all rows in WAL (not ingested)",
                        ing["count_wal_only"],
                        ing["count_wal_only_s"],
                    ],
                    ["after ingest: 1 Parquet file", ing["count_1_file"], ing["count_1_file_s"]],
                    [
                        f"{files} Parquet files (before compaction)",
                        ing[f"count_{files}_files"],
                        ing[f"count_{files}_files_s"],
                    ],
                    ["after compaction: 1 file", ing["count_compacted"], ing["count_compacted_s"]],
                    [
                        "1 file + 1 row in the WAL",
                        ing["count_compacted_plus_wal"],
                        ing["count_compacted_plus_wal_s"],
                    ],
                ],
                digits=3,
            )
            counts_ok = (
                ing["count_wal_only"] == expected == ing["ingest_rows"] == ing["count_1_file"]
                and ing[f"count_{files}_files"] == ing["count_compacted"] == ing["expected_rows"]
                and ing["count_compacted_plus_wal"] == ing["expected_rows"] + 1
            )
            verdicts.append(
                f"ingest: {'PASS' if counts_ok else 'FAIL'} "
                f"({ing['ingest_rows_per_s']:,.0f} rows/s; row counts "
                f"{'consistent' if counts_ok else 'INCONSISTENT'} through ingest "
                "and compaction)"
            )
            print(verdicts[-1])
            rc |= 0 if counts_ok else 1
        if "lookup" not in args.skip:
            print(
                f"\n5. feedback lookup: {args.lookup_parquet_rows:,} turns in Parquet + "
                f"{args.lookup_wal_mb:.0f} MB of WAL; one turn_id per lookup",
                flush=True,
            )
            lk = lookup_bench(
                root / "lookup",
                factory,
                args.lookup_parquet_rows,
                args.lookup_wal_mb,
                args.lookups,
            )
            results["lookup"] = lk
            print_table(
                ["method", "p50 ms", "max ms", "Python CPU p50 ms"],
                [
                    [
                        f"connect() + SQL (before; WAL {lk['wal_mb']:.0f} MB)",
                        lk["view_ms_p50"],
                        lk["view_ms_max"],
                        lk["view_python_cpu_ms_p50"],
                    ],
                    [
                        "lookup.find_turn (after)",
                        lk["point_ms_p50"],
                        lk["point_ms_max"],
                        lk["point_python_cpu_ms_p50"],
                    ],
                ],
            )
            ok = not lk["disagreements"]
            verdicts.append(
                f"feedback lookup: {'PASS' if ok else 'FAIL'} ({lk['speedup_p50']:.0f}x faster "
                f"at p50; {lk['disagreements']} disagreements between the two methods)"
            )
            print(verdicts[-1], flush=True)
            rc |= 0 if ok else 1
    finally:
        if args.keep:
            print(f"ledger dirs kept under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    other = others.cores(time.process_time() - cpu0)
    results["other_load_cores"] = other
    print(
        f"\nother processes' CPU during the run: {other:.2f} cores on average"
        + ("  (NOISY: rerun on an idle machine)" if other > 0.25 else "")
    )
    print("\nVERDICT:")
    for v in verdicts:
        print(f"  {v}")
    results["verdicts"] = verdicts
    if args.json:
        write_json(args.json, results)
    return rc


if __name__ == "__main__":
    sys.exit(main())
