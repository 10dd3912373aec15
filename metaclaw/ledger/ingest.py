"""Ingest: sealed WAL segments → hive-partitioned Parquet, then compaction of small files.

Idempotent by construction: the manifest commit that publishes a segment's Parquet files also
records the segment's name, so a segment seen again after a crash (its file not yet deleted) is
only deleted; rows whose id is already in the ledger are dropped before writing, so re-imports
and retries never double-count.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from metaclaw.config import LedgerPaths, LedgerSettings
from metaclaw.ledger.manifest import Manifest, ledger_lock
from metaclaw.ledger.records import Row, decode_lines, rows_to_table, unique_by_id
from metaclaw.ledger.schemas import PARTITION_COLUMN, TABLES, TableSpec
from metaclaw.ledger.wal import claim_segment, fsync_dir, list_segments

COMPACT_TARGET_BYTES = 128 * 1024 * 1024  # files above this size are left alone


@dataclass
class IngestReport:
    segments: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    active_segments: int = 0
    compacted_files: int = 0
    deleted_files: int = 0

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Temp file + fsync + rename, so no reader ever sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def existing_ids(paths: LedgerPaths, files: list[str], spec: TableSpec, ids: list[str]) -> set[str]:
    """Which of `ids` the table's live Parquet files already hold."""
    if not files or not ids:
        return set()
    con = duckdb.connect()
    try:
        con.register("batch_ids", pa.table({"id": pa.array(ids, pa.string())}))
        sql = (
            f"SELECT DISTINCT {spec.id_column} FROM read_parquet(?, union_by_name=true) "
            f"WHERE {spec.id_column} IN (SELECT id FROM batch_ids)"
        )
        rows = con.execute(sql, [[str(paths.ledger / f) for f in files]]).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows}


def ingest(paths: LedgerPaths, settings: LedgerSettings) -> IngestReport:
    """Move every sealed segment into Parquet, compact, and delete what is no longer needed."""
    report = IngestReport()
    with ledger_lock(paths.lock):
        manifest = Manifest.load(paths.manifest)
        _ingest_segments(paths, manifest, report)
        _compact(paths, settings, manifest, report)
        _collect_garbage(paths, settings, manifest, report)
    return report


def _ingest_segments(paths: LedgerPaths, manifest: Manifest, report: IngestReport) -> None:
    with ExitStack() as stack:
        claimed: list[Path] = []
        for seg in list_segments(paths.wal):
            if stack.enter_context(claim_segment(seg)) is None:
                report.active_segments += 1
            else:
                claimed.append(seg)
        if not claimed:
            return
        done = set(manifest.segments)
        by_table: dict[str, list[Row]] = defaultdict(list)
        for seg in claimed:
            if seg.name in done:
                continue
            for table_name, row in decode_lines(seg.read_bytes()):
                by_table[table_name].append(row)
        new_files: dict[str, list[str]] = defaultdict(list)
        for table_name, rows in by_table.items():
            spec = TABLES[table_name]
            fresh = _drop_known(paths, manifest, spec, rows, report)
            report.rows[table_name] = len(fresh)
            new_files[table_name] = _write_partitions(paths, spec, fresh)
        for table_name, files in new_files.items():
            manifest.files.setdefault(table_name, []).extend(files)
        manifest.segments.extend(seg.name for seg in claimed if seg.name not in done)
        manifest.save(paths.manifest)
        for seg in claimed:
            seg.unlink(missing_ok=True)
        report.segments = len(claimed)
    # The segment files are gone now; forget their names at the next commit.
    on_disk = {p.name for p in list_segments(paths.wal)}
    manifest.segments = [s for s in manifest.segments if s in on_disk]


def _drop_known(
    paths: LedgerPaths, manifest: Manifest, spec: TableSpec, rows: list[Row], report: IngestReport
) -> list[Row]:
    unique = unique_by_id(spec, rows)
    known = existing_ids(paths, manifest.files.get(spec.name, []), spec, list(unique))
    report.duplicates += len(rows) - len(unique) + len(known)
    return [row for key, row in unique.items() if key not in known]


def _write_partitions(paths: LedgerPaths, spec: TableSpec, rows: list[Row]) -> list[str]:
    by_date: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_date[spec.partition_value(row)].append(row)
    written = []
    for day, day_rows in sorted(by_date.items()):
        rel = f"{spec.name}/{PARTITION_COLUMN}={day}/part-{uuid.uuid4().hex}.parquet"
        write_parquet_atomic(rows_to_table(spec, day_rows), paths.ledger / rel)
        written.append(rel)
    return written


def _compact(
    paths: LedgerPaths, settings: LedgerSettings, manifest: Manifest, report: IngestReport
) -> None:
    changed = False
    for table_name, files in list(manifest.files.items()):
        spec = TABLES[table_name]
        by_partition: dict[str, list[str]] = defaultdict(list)
        for rel in files:
            if (paths.ledger / rel).stat().st_size < COMPACT_TARGET_BYTES:
                by_partition[str(Path(rel).parent)].append(rel)
        for partition, small in by_partition.items():
            if len(small) < settings.compact_min_files:
                continue
            merged = pa.concat_tables(
                [pq.read_table(paths.ledger / rel) for rel in small], promote_options="default"
            ).sort_by(spec.time_column)
            rel = f"{partition}/part-c{uuid.uuid4().hex}.parquet"
            write_parquet_atomic(merged, paths.ledger / rel)
            manifest.replace_files(table_name, small, [rel])
            report.compacted_files += len(small)
            changed = True
    if changed:
        manifest.save(paths.manifest)


def _collect_garbage(
    paths: LedgerPaths, settings: LedgerSettings, manifest: Manifest, report: IngestReport
) -> None:
    """Delete replaced files after the grace period, and orphans left by a crashed ingest."""
    cutoff = time.time() - settings.compact_grace_s
    expired = [f for f, when in manifest.trash.items() if when < cutoff]
    live = {f for files in manifest.files.values() for f in files} | set(manifest.trash)
    orphans = [
        p
        for p in paths.ledger.glob("*/*/*.parquet")
        if str(p.relative_to(paths.ledger)) not in live and p.stat().st_mtime < cutoff
    ]
    for rel in expired:
        (paths.ledger / rel).unlink(missing_ok=True)
        del manifest.trash[rel]
    for p in orphans:
        p.unlink(missing_ok=True)
    report.deleted_files = len(expired) + len(orphans)
    if expired:
        manifest.save(paths.manifest)
