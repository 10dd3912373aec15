"""The agent registry on disk: `METACLAW_HOME/agents.json`, and the proxy's cached view of it.

Why one JSON file: the registry is a handful of records read by every proxy worker and changed
by a person now and then. A file replaced atomically (temp file, fsync, rename) is never seen
half-written by a reader, its (inode, mtime, size) says cheaply whether it changed, and it is
readable with any tool. It is not `metaclaw.toml`: that file is the user's and gets shared and
committed, while this one holds key hashes and is written only by `metaclaw agents`. Changes
hold an exclusive lock on a side file, so two concurrent `agents add` never lose one another.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson

from metaclaw.agents.registry import AgentError, Registry
from metaclaw.ledger.wal import fsync_dir

log = logging.getLogger("metaclaw.agents")
REGISTRY_FILE = "agents.json"
_LOCK_SUFFIX = ".lock"
RECHECK_S = 1.0  # how stale the proxy's view of the registry may be, at most


def registry_path(home: Path) -> Path:
    return Path(home) / REGISTRY_FILE


def load(path: Path) -> Registry:
    """The registry in `path`; an absent file is an empty registry (no agents: all `default`)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Registry()
    try:
        return Registry.from_json(orjson.loads(data))
    except (orjson.JSONDecodeError, KeyError, TypeError, AgentError) as exc:
        raise AgentError(f"cannot read the agent registry {path}: {exc}") from None


def _save(path: Path, registry: Registry) -> None:
    """Replace the file atomically: readers see the old registry or the new one, never a mix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(registry.as_json(), option=orjson.OPT_INDENT_2))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # the rename itself survives a crash


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + _LOCK_SUFFIX), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def update(path: Path, change: Callable[[Registry], Registry]) -> Registry:
    """Apply `change` to the current registry under the lock and save the result."""
    with _locked(path):
        registry = change(load(path))
        _save(path, registry)
        return registry


class AgentKeys:
    """The proxy's view of the registry: key hash -> agent, reloaded when the file changes.

    Why a stat at most every `recheck_s` and not a file read per request: a key added, rotated
    or removed takes effect within that time without a restart, while a request costs one hash,
    one dict access and a clock read (a `stat` took 11-17 µs on the project's loaded, sandboxed
    machine: too much to pay per request for news that comes once a month). A file that cannot
    be read keeps the last good registry (logged): a bad edit must not open a keyed proxy."""

    def __init__(self, path: Path, recheck_s: float = RECHECK_S) -> None:
        """Raises `AgentError` when the file exists but cannot be read: a proxy must not start
        open when its agents could not be loaded."""
        self.path = path
        self.recheck_s = recheck_s
        self._next_check = time.monotonic() + recheck_s
        self._signature = self._stat()
        self.registry = load(path)
        self._index = self.registry.key_index()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current(self) -> Registry:
        now = time.monotonic()
        if now < self._next_check:
            return self.registry
        self._next_check = now + self.recheck_s
        signature = self._stat()
        if signature != self._signature:
            try:
                registry = load(self.path)
            except AgentError as exc:
                log.error("%s; keeping the agents loaded before", exc)
                self._signature = signature  # said once per change of the file, not per request
                return self.registry
            self.registry, self._index, self._signature = registry, registry.key_index(), signature
        return self.registry

    def index(self) -> dict[str, str]:
        """The key-hash index of the current registry (reloaded first if the file changed)."""
        self.current()
        return self._index
