"""Where the ledger's Parquet files and manifest live: a local directory or an object store.

Why a seam: ingest and the reader need six operations on the *ledger root* (write a file under a
final name, read, size, list, delete, publish a manifest) and everything else in the ledger is the
same on a laptop and on S3. The WAL is not here — it stays on the local disk of the process that
writes it, because durability needs `fsync` on a local file system.

Two implementations:

- `LocalStorage` — today's layout: files under `METACLAW_HOME/ledger`, one `_manifest.json`
  replaced by an atomic rename, ingests serialised by `flock` (`paths.lock`).
- `FsspecStorage` — any fsspec URL (`s3://bucket/prefix`, `memory://…`). There is no rename on
  S3, so publishing works differently: a Parquet file is uploaded under its final key (keys hold a
  uuid and are never overwritten; readers only read keys a manifest lists, so a half-uploaded
  object is never read), then the new manifest is written as `_manifest/<version:020d>.json` with
  a conditional put (`If-None-Match: *`). Readers take the highest version. Two ingests on
  different machines that both try version N+1: exactly one put succeeds; the other gets
  `ManifestConflictError`, reloads version N+1 and redoes its step on top of it (optimistic
  concurrency), so no commit is ever overwritten and no turn is lost or landed twice.

Credentials come from the standard AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`, `AWS_REGION`/`AWS_DEFAULT_REGION`); an S3-compatible endpoint (MinIO, moto,
R2) from `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import re
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import duckdb
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from metaclaw.ledger.manifest import Manifest, ledger_lock
from metaclaw.ledger.wal import fsync_dir

log = logging.getLogger(__name__)

MANIFEST_DIR = "_manifest"
TEMP_SUFFIX = ".tmp"  # files being written; a crash can leave one (collected after the grace)
MANIFEST_KEEP = 20  # older manifest versions are deleted; readers retry if theirs vanished
_VERSION_FILE = re.compile(r"^(\d{20})\.json$")
# Stores whose "create" write mode is an atomic conditional put. Elsewhere fsspec falls back to
# exists-then-write, which two machines can race: only one ingest may run cluster-wide there.
ATOMIC_CREATE_PROTOCOLS = frozenset({"s3", "s3a", "memory"})


class ManifestConflictError(RuntimeError):
    """Another writer published the manifest version this one meant to publish."""


@dataclass(frozen=True)
class FileInfo:
    rel: str  # path under the ledger root, e.g. turns/date=2026-01-01/part-….parquet
    size: int
    mtime: float  # epoch seconds


def is_url(root: str | Path) -> bool:
    """True for `scheme://…` roots other than `file://` (those are local paths)."""
    scheme = urlparse(str(root)).scheme
    return len(scheme) > 1 and scheme != "file"


def local_path(root: str | Path) -> Path:
    text = str(root)
    return Path(text[len("file://") :] if text.startswith("file://") else text)


def s3_options() -> dict[str, Any]:
    """fsspec/s3fs options from the standard AWS environment (credentials are read by botocore)."""
    opts: dict[str, Any] = {"use_listings_cache": False}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    return opts


def lancedb_storage_options(uri: str) -> dict[str, str]:
    """`storage_options` for `lancedb.connect(uri, …)` on S3: the same environment, in the names
    LanceDB's object store understands (it reads the AWS_* variables itself, except the endpoint
    of an S3-compatible store and whether plain http is allowed)."""
    if urlparse(uri).scheme not in ("s3", "s3a"):
        return {}
    opts: dict[str, str] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint"] = endpoint
        if endpoint.startswith("http://"):
            opts["allow_http"] = "true"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        opts["region"] = region
    return opts


class LedgerStorage(ABC):
    """The ledger root: Parquet files under unique names plus the manifest that lists the live
    ones."""

    root: str  # a local path or a URL, as configured
    remote: bool

    @abstractmethod
    def url(self, rel: str) -> str:
        """What DuckDB/pyarrow open for `rel` (a path, or a URL the registered fs serves)."""

    @abstractmethod
    def write_parquet(self, table: pa.Table, rel: str, bloom: tuple[str, ...] = ()) -> None:
        """Land a table under its final name; a reader can never see half of it. `bloom`:
        columns to write Parquet Bloom filters for (point lookups skip row groups by them)."""

    @abstractmethod
    def read_table(self, rel: str) -> pa.Table: ...

    @abstractmethod
    def size(self, rel: str) -> int: ...

    @abstractmethod
    def list_parquet(self) -> list[FileInfo]:
        """Every `<table>/<partition>/*.parquet` under the root, live or not (for orphan GC)."""

    @abstractmethod
    def delete(self, rel: str) -> None:
        """Remove a file; a missing one is not an error."""

    @abstractmethod
    def load_manifest(self) -> Manifest: ...

    @abstractmethod
    def publish(self, manifest: Manifest) -> None:
        """Publish `manifest` as version `manifest.version + 1` (the version is bumped in place).

        Raises `ManifestConflictError` when another writer published that version first; the
        caller reloads and redoes its change.
        """

    @abstractmethod
    def writer_lock(self) -> contextlib.AbstractContextManager[None]:
        """One ingest at a time on this machine (the WAL segments are this machine's)."""

    def register(self, con: duckdb.DuckDBPyConnection) -> None:  # noqa: B027
        """Let `con` read `url(...)` paths (object stores go through fsspec; no httpfs here)."""

    def prune_manifests(self) -> int:
        """Delete manifest versions no reader needs any more; returns how many."""
        return 0

    def collect_temp(self, older_than: float) -> int:
        """Delete temp files a crashed write left, last modified before `older_than` (epoch
        s); returns how many. Object stores write final keys directly: nothing to do."""
        return 0


class LocalStorage(LedgerStorage):
    """Files under a local directory; `_manifest.json` replaced atomically under `flock`."""

    remote = False

    def __init__(self, directory: Path, lock: Path | None = None) -> None:
        self.directory = Path(directory)
        self.root = str(self.directory)
        self.manifest_path = self.directory / "_manifest.json"
        self.lock_path = lock or self.directory / ".lock"

    def url(self, rel: str) -> str:
        return str(self.directory / rel)

    def write_parquet(self, table: pa.Table, rel: str, bloom: tuple[str, ...] = ()) -> None:
        write_parquet_atomic(table, self.directory / rel, bloom)

    def read_table(self, rel: str) -> pa.Table:
        return pq.read_table(self.directory / rel)

    def size(self, rel: str) -> int:
        return (self.directory / rel).stat().st_size

    def list_parquet(self) -> list[FileInfo]:
        out = []
        for p in self.directory.glob("*/*/*.parquet"):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append(FileInfo(str(p.relative_to(self.directory)), st.st_size, st.st_mtime))
        return out

    def delete(self, rel: str) -> None:
        (self.directory / rel).unlink(missing_ok=True)

    def collect_temp(self, older_than: float) -> int:
        removed = 0
        for pattern in (f".*{TEMP_SUFFIX}", f"*/*/.*{TEMP_SUFFIX}"):  # manifest, Parquet
            for path in self.directory.glob(pattern):
                with contextlib.suppress(FileNotFoundError):
                    if path.stat().st_mtime < older_than:
                        path.unlink()
                        removed += 1
        return removed

    def load_manifest(self) -> Manifest:
        return Manifest.load(self.manifest_path)

    def publish(self, manifest: Manifest) -> None:
        # The caller holds writer_lock (flock): nobody else can publish in between.
        manifest.save(self.manifest_path)

    def writer_lock(self) -> contextlib.AbstractContextManager[None]:
        return ledger_lock(self.lock_path)


class FsspecStorage(LedgerStorage):
    """Files on any fsspec filesystem; manifests versioned and published by conditional put."""

    remote = True

    def __init__(self, url: str, lock: Path, **options: Any) -> None:
        import fsspec  # imported here: local ledgers never need it

        self.root = url.rstrip("/")
        self.protocol = urlparse(self.root).scheme
        if self.protocol in ("s3", "s3a"):
            options = {**s3_options(), **options}
        self.fs, self._base = fsspec.core.url_to_fs(self.root, **options)
        self._base = self._base.rstrip("/")
        self.lock_path = lock
        if self.protocol not in ATOMIC_CREATE_PROTOCOLS:
            log.warning(
                "ledger root %s: %s:// has no atomic conditional put; run one ingest at a time "
                "cluster-wide (the ingest deployment's concurrency_limit: 1 does)",
                self.root,
                self.protocol,
            )

    def _path(self, rel: str) -> str:
        return f"{self._base}/{rel}"

    def url(self, rel: str) -> str:
        return f"{self.protocol}://{self._path(rel)}"

    def write_parquet(self, table: pa.Table, rel: str, bloom: tuple[str, ...] = ()) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd", **_bloom_options(table, bloom))
        # The key is new (uuid) and unlisted until a manifest names it: a plain put is atomic
        # enough — S3 never exposes a partial object, and nobody reads an unlisted key.
        self.fs.pipe_file(self._path(rel), buf.getvalue())

    def read_table(self, rel: str) -> pa.Table:
        return pq.read_table(io.BytesIO(self.fs.cat_file(self._path(rel))))

    def size(self, rel: str) -> int:
        return int(self.fs.size(self._path(rel)))

    def list_parquet(self) -> list[FileInfo]:
        self.fs.invalidate_cache()
        try:
            found = self.fs.find(self._base, detail=True)
        except FileNotFoundError:
            return []
        out = []
        for path, info in found.items():
            rel = path[len(self._base) + 1 :]
            if rel.endswith(".parquet") and rel.count("/") == 2:
                out.append(FileInfo(rel, int(info.get("size") or 0), _mtime(info)))
        return out

    def delete(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(rel))

    # -- the versioned manifest ------------------------------------------------------------
    def _versions(self) -> list[int]:
        self.fs.invalidate_cache()
        try:
            names = self.fs.ls(self._path(MANIFEST_DIR), detail=False)
        except FileNotFoundError:
            return []
        found = (_VERSION_FILE.match(n.rsplit("/", 1)[-1]) for n in names)
        return sorted(int(m.group(1)) for m in found if m)

    def _manifest_key(self, version: int) -> str:
        return self._path(f"{MANIFEST_DIR}/{version:020d}.json")

    def load_manifest(self) -> Manifest:
        for _ in range(5):  # the newest version may be pruned between listing and reading
            versions = self._versions()
            if not versions:
                return Manifest()
            try:
                data = self.fs.cat_file(self._manifest_key(versions[-1]))
            except FileNotFoundError:
                continue
            return manifest_from_bytes(data)
        raise RuntimeError(f"could not read a stable manifest under {self.root}/{MANIFEST_DIR}")

    def publish(self, manifest: Manifest) -> None:
        manifest.version += 1
        try:
            self.fs.pipe_file(
                self._manifest_key(manifest.version), manifest_to_bytes(manifest), mode="create"
            )
        except FileExistsError as exc:
            manifest.version -= 1
            raise ManifestConflictError(
                f"manifest version {manifest.version + 1} of {self.root} was published by "
                "another writer"
            ) from exc

    def prune_manifests(self) -> int:
        versions = self._versions()
        old = versions[:-MANIFEST_KEEP]
        for v in old:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._manifest_key(v))
        return len(old)

    def writer_lock(self) -> contextlib.AbstractContextManager[None]:
        return ledger_lock(self.lock_path)

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        con.register_filesystem(self.fs)


def manifest_to_bytes(manifest: Manifest) -> bytes:
    return orjson.dumps(
        {
            "version": manifest.version,
            "files": manifest.files,
            "segments": manifest.segments,
            "trash": manifest.trash,
        },
        option=orjson.OPT_INDENT_2,
    )


def manifest_from_bytes(data: bytes) -> Manifest:
    raw = orjson.loads(data)
    return Manifest(
        version=raw["version"],
        files={k: list(v) for k, v in raw["files"].items()},
        segments=list(raw["segments"]),
        trash=dict(raw.get("trash", {})),
    )


def _mtime(info: dict[str, Any]) -> float:
    value = info.get("LastModified") or info.get("mtime") or info.get("created")
    if value is None:
        return time.time()  # unknown age: treat as new, so GC never deletes it early
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)


def _bloom_options(table: pa.Table, columns: tuple[str, ...]) -> dict[str, Any]:
    """Bloom filters sized for the file (the default sizing doubled the write's CPU time)."""
    present = [c for c in columns if c in table.column_names]
    if not present:
        return {}
    size = {"ndv": max(table.num_rows, 1), "fpp": 0.01}
    return {"bloom_filter_options": {c: size for c in present}}


def write_parquet_atomic(table: pa.Table, path: Path, bloom: tuple[str, ...] = ()) -> None:
    """Temp file + fsync + rename, so no reader ever sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{TEMP_SUFFIX}")
    try:
        pq.write_table(table, tmp, compression="zstd", **_bloom_options(table, bloom))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves nothing behind
        raise
    fsync_dir(path.parent)


def open_storage(paths: Any) -> LedgerStorage:
    """The storage of a `LedgerPaths` (its `root` is a local path or a URL)."""
    root = getattr(paths, "root", None) or str(paths.ledger)
    if is_url(root):
        return FsspecStorage(root, paths.lock)
    return LocalStorage(local_path(root), paths.lock)


def backoff(attempt: int) -> None:
    """Sleep before retry `attempt` after a conflict: short, growing, jittered, so two writers
    that collided do not collide again in lockstep."""
    if attempt:
        time.sleep(min(1.0, 0.02 * 2**attempt) * random.uniform(0.5, 1.5))
