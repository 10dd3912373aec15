"""Ingest: sealed WAL segments → hive-partitioned Parquet, then compaction of small files.

Idempotent by construction: the manifest commit that publishes a segment's Parquet files also
records the segment's name, so a segment seen again after a crash (its file not yet deleted) is
only deleted; rows whose id is already in the ledger are dropped before writing, so re-imports
and retries never double-count.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from metaclaw.config import LedgerPaths, LedgerSettings
from metaclaw.ledger.coerce import coerce_rows
from metaclaw.ledger.deadletter import write_dead_letters
from metaclaw.ledger.lookup import LOOKUP_COLUMNS
from metaclaw.ledger.manifest import LedgerBusyError, Manifest
from metaclaw.ledger.records import BadLine, Row, decode_lines, rows_to_table, unique_by_id
from metaclaw.ledger.schemas import PARTITION_COLUMN, TABLES, TableSpec
from metaclaw.ledger.storage import (
    LedgerStorage,
    ManifestConflictError,
    backoff,
    open_storage,
    write_parquet_atomic,
)
from metaclaw.ledger.wal import claim_segment, collect_stale_staging, list_segments

log = logging.getLogger(__name__)

COMPACT_TARGET_BYTES = 128 * 1024 * 1024  # files above this size are left alone
PUBLISH_ATTEMPTS = 30  # manifest conflicts retried before giving up (object stores only)
__all__ = ["IngestReport", "existing_ids", "ingest", "write_parquet_atomic"]


@dataclass
class IngestReport:
    segments: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    active_segments: int = 0
    compacted_files: int = 0
    deleted_files: int = 0
    conflicts: int = 0  # object stores: manifest versions another writer published first
    dead_letters: int = 0  # rows that could not be stored, kept under METACLAW_HOME/dead_letters

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def existing_ids(
    store: LedgerStorage, files: list[str], spec: TableSpec, ids: list[str]
) -> set[str]:
    """Which of `ids` the table's live Parquet files already hold."""
    if not files or not ids:
        return set()
    con = duckdb.connect()
    try:
        store.register(con)
        con.register("batch_ids", pa.table({"id": pa.array(ids, pa.string())}))
        sql = (
            f"SELECT DISTINCT {spec.id_column} FROM read_parquet(?, union_by_name=true) "
            f"WHERE {spec.id_column} IN (SELECT id FROM batch_ids)"
        )
        rows = con.execute(sql, [[store.url(f) for f in files]]).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def ingest(paths: LedgerPaths, settings: LedgerSettings) -> IngestReport:
    """Move every sealed segment into Parquet, compact, and delete what is no longer needed."""
    report = IngestReport()
    store = open_storage(paths)
    with store.writer_lock():
        manifest = _ingest_segments(paths, store, report, settings)
        manifest = _compact(store, settings, manifest, report)
        _collect_garbage(store, settings, manifest, report)
    collect_stale_staging(paths.wal, settings.compact_grace_s)
    return report


@dataclass
class _Decoded:
    """A claimed segment's records by table, and what could not be stored (dead letters)."""

    rows: dict[str, list[Row]]
    dead: list[dict[str, Any]]


def _decode(name: str, blob: bytes) -> _Decoded:
    bad: list[BadLine] = []
    by_table: dict[str, list[Row]] = defaultdict(list)
    dead: list[dict[str, Any]] = []
    for table_name, row in decode_lines(blob, bad):
        if table_name in TABLES:
            by_table[table_name].append(row)
        else:
            dead.append(
                {"table": table_name, "reason": f"unknown table {table_name!r}", "row": row}
            )
    for line in bad:
        log.warning(
            "WAL segment %s: corrupt line at byte %d (%s); skipped, kept as a dead letter",
            name,
            line.offset,
            line.reason,
        )
        dead.append(
            {
                "offset": line.offset,
                "reason": f"corrupt WAL line: {line.reason}",
                "raw": line.raw.decode("utf-8", "backslashreplace"),
            }
        )
    rows: dict[str, list[Row]] = {}
    for table_name, table_rows in by_table.items():
        good, failed = coerce_rows(TABLES[table_name], table_rows)
        rows[table_name] = good
        dead.extend({"table": table_name, "reason": why, "row": row} for row, why in failed)
    return _Decoded(rows, dead)


def _batches(segments: list[Path], limit: int) -> list[list[Path]]:
    """Consecutive groups of about `limit` bytes (a segment larger than that goes alone)."""
    out: list[list[Path]] = []
    size = 0
    for seg in segments:
        try:
            seg_size = seg.stat().st_size
        except FileNotFoundError:
            continue
        if not out or size + seg_size > limit:
            out.append([])
            size = 0
        out[-1].append(seg)
        size += seg_size
    return out


def _ingest_segments(
    paths: LedgerPaths, store: LedgerStorage, report: IngestReport, settings: LedgerSettings
) -> Manifest:
    """Land the claimed segments batch by batch (memory bounded by `ingest_batch_bytes`)."""
    with ExitStack() as stack:
        claimed: list[Path] = []
        for seg in list_segments(paths.wal):
            if stack.enter_context(claim_segment(seg)) is None:
                report.active_segments += 1
            else:
                claimed.append(seg)
        manifest = store.load_manifest()
        for batch in _batches(claimed, settings.ingest_batch_bytes):
            decoded = {seg.name: _decode(seg.name, seg.read_bytes()) for seg in batch}
            done = set(manifest.segments)
            for name, segment in decoded.items():
                if segment.dead and name not in done:
                    write_dead_letters(paths.dead_letters, name, segment.dead)
                    log.error(
                        "ingest: %d row(s) of WAL segment %s could not be stored; kept in %s",
                        len(segment.dead),
                        name,
                        paths.dead_letters,
                    )
                    report.dead_letters += len(segment.dead)
            manifest = _publish(store, manifest, decoded, report, settings.compact_grace_s)
            for seg in batch:
                seg.unlink(missing_ok=True)
            report.segments += len(batch)
    # The segment files are gone now; forget their names at the next commit. (On an object
    # store the manifest is shared by machines with other WALs: forget only our own.)
    if store.remote:
        gone = {seg.name for seg in claimed}
        manifest.segments = [s for s in manifest.segments if s not in gone]
    else:
        on_disk = {p.name for p in list_segments(paths.wal)}
        manifest.segments = [s for s in manifest.segments if s in on_disk]
    return manifest


def _publish(
    store: LedgerStorage,
    manifest: Manifest,
    decoded: dict[str, _Decoded],
    report: IngestReport,
    grace_s: float,
) -> Manifest:
    """Land one batch and publish it; on an object store, redo the step on top of any manifest
    another machine published first (its rows may overlap ours: they are dropped by id)."""
    for attempt in range(PUBLISH_ATTEMPTS):
        backoff(attempt)
        if attempt:
            manifest = store.load_manifest()
        started = time.time()
        attempt_report = IngestReport()
        new_files = _land(store, manifest, decoded, attempt_report)
        for table_name, files in new_files.items():
            manifest.files.setdefault(table_name, []).extend(files)
        done = set(manifest.segments)
        manifest.segments.extend(name for name in decoded if name not in done)
        try:
            if store.remote and grace_s > 0 and time.time() - started > grace_s / 2:
                # Another machine's GC deletes unlisted files older than the grace period:
                # files this old might be gone already, so land them afresh.
                raise ManifestConflictError("landing took longer than half the GC grace")
            store.publish(manifest)
        except ManifestConflictError:
            report.conflicts += 1
            for rel in (f for files in new_files.values() for f in files):
                store.delete(rel)
            continue
        for table_name, n in attempt_report.rows.items():
            report.rows[table_name] = report.rows.get(table_name, 0) + n
        report.duplicates += attempt_report.duplicates
        return manifest
    raise LedgerBusyError(
        f"could not publish the manifest of {store.root} after {PUBLISH_ATTEMPTS} "
        "attempts (too many concurrent ingests); the WAL is intact, run ingest again"
    )


def _land(
    store: LedgerStorage, manifest: Manifest, decoded: dict[str, _Decoded], report: IngestReport
) -> dict[str, list[str]]:
    """Write the rows of not-yet-ingested segments as Parquet; returns the new files."""
    done = set(manifest.segments)
    by_table: dict[str, list[Row]] = defaultdict(list)
    for name, segment in decoded.items():
        if name in done:
            continue
        for table_name, rows in segment.rows.items():
            by_table[table_name].extend(rows)
    new_files: dict[str, list[str]] = defaultdict(list)
    for table_name, rows in by_table.items():
        spec = TABLES[table_name]
        fresh = _drop_known(store, manifest, spec, rows, report)
        report.rows[table_name] = len(fresh)
        new_files[table_name] = _write_partitions(store, spec, fresh)
    return new_files


def _drop_known(
    store: LedgerStorage,
    manifest: Manifest,
    spec: TableSpec,
    rows: list[Row],
    report: IngestReport,
) -> list[Row]:
    unique = unique_by_id(spec, rows)
    known = existing_ids(store, manifest.files.get(spec.name, []), spec, list(unique))
    report.duplicates += len(rows) - len(unique) + len(known)
    return [row for key, row in unique.items() if key not in known]


def _write_partitions(store: LedgerStorage, spec: TableSpec, rows: list[Row]) -> list[str]:
    by_date: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_date[spec.partition_value(row)].append(row)
    written = []
    for day, day_rows in sorted(by_date.items()):
        rel = f"{spec.name}/{PARTITION_COLUMN}={day}/part-{uuid.uuid4().hex}.parquet"
        store.write_parquet(
            rows_to_table(spec, day_rows, coerced=True), rel, LOOKUP_COLUMNS.get(spec.name, ())
        )
        written.append(rel)
    return written


def compaction_tier(rel: str) -> int:
    """How many merges a file's rows went through: 0 for a file ingest wrote, n for the output
    of a tier n-1 merge (`part-L<n>-…`; `part-c…` files of earlier versions count as 1)."""
    stem = rel.rsplit("/", 1)[-1].removeprefix("part-").removesuffix(".parquet")
    if stem.startswith("L"):
        return int(stem[1:].split("-", 1)[0])
    return 1 if len(stem) == 33 and stem.startswith("c") else 0  # "c" + uuid hex


def _due_merges(
    store: LedgerStorage, settings: LedgerSettings, manifest: Manifest, table_name: str
) -> Iterator[tuple[str, int, list[str]]]:
    """(partition, tier, files) groups to merge, lowest tier first; a merge's output can
    complete the next tier's group within the same run (the groups are recomputed)."""
    while True:
        groups: dict[tuple[str, int], list[str]] = defaultdict(list)
        for rel in manifest.files.get(table_name, []):
            if store.size(rel) < COMPACT_TARGET_BYTES:
                groups[(rel.rsplit("/", 1)[0], compaction_tier(rel))].append(rel)
        due = sorted(
            (key for key, files in groups.items() if len(files) >= settings.compact_min_files),
            key=lambda key: key[1],
        )
        if not due:
            return
        partition, tier = due[0]
        yield partition, tier, groups[due[0]]


def _compact(
    store: LedgerStorage, settings: LedgerSettings, manifest: Manifest, report: IngestReport
) -> Manifest:
    """Merge small files per partition, by size tier: `compact_min_files` files of one tier
    become one file of the next. A merged file is rewritten only when enough files of its own
    tier accumulate, so each row is rewritten O(log n) times, not on every run. On a publish
    conflict the merge is dropped (the next run compacts against the newer manifest):
    compaction is an optimisation, never urgent."""
    written: list[str] = []
    compacted = 0
    for table_name in list(manifest.files):
        spec = TABLES[table_name]
        for partition, tier, small in _due_merges(store, settings, manifest, table_name):
            merged = pa.concat_tables(
                [store.read_table(rel) for rel in small], promote_options="default"
            ).sort_by(spec.time_column)
            rel = f"{partition}/part-L{tier + 1}-{uuid.uuid4().hex}.parquet"
            store.write_parquet(merged, rel, LOOKUP_COLUMNS.get(table_name, ()))
            written.append(rel)
            manifest.replace_files(table_name, small, [rel])
            compacted += len(small)
    if written:
        try:
            store.publish(manifest)
        except ManifestConflictError:
            report.conflicts += 1
            for rel in written:
                store.delete(rel)
            return store.load_manifest()
        report.compacted_files += compacted
    return manifest


def _collect_garbage(
    store: LedgerStorage, settings: LedgerSettings, manifest: Manifest, report: IngestReport
) -> None:
    """Delete replaced files after the grace period, and orphans left by a crashed ingest."""
    cutoff = time.time() - settings.compact_grace_s
    expired = [f for f, when in manifest.trash.items() if when < cutoff]
    live = {f for files in manifest.files.values() for f in files} | set(manifest.trash)
    orphans = [f.rel for f in store.list_parquet() if f.rel not in live and f.mtime < cutoff]
    if expired:
        for rel in expired:
            del manifest.trash[rel]
        try:
            store.publish(manifest)  # unlist first, then delete: a reader never misses a file
        except ManifestConflictError:
            report.conflicts += 1
            return  # someone else moved on; the next run collects
        for rel in expired:
            store.delete(rel)
    for rel in orphans:
        store.delete(rel)
    report.deleted_files = len(expired) + len(orphans) + store.collect_temp(cutoff)
    store.prune_manifests()
