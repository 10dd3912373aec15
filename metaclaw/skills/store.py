"""The skill library on disk: LanceDB tables under `METACLAW_HOME/skills/` (embedded, no server).

Tables:
- `skills`: one row per (skill_id, version). Content is immutable; a revision is a new row and
  the previous row becomes `superseded`. "The current version" of a skill is a query: its row
  with the highest version. Rows are embedded by the registered embedding function on `add`.
- `skill_changes`: the change log; every commit appends its rows under a new skill-set version,
  so `skill_set_version` = max(set_version) and increments on every change. Turns are stamped
  with it, so training can tell pre- from post-evolution data.
- `skill_stats`: efficacy per skill version (rewritten by `refresh_stats`).

`state.json` mirrors the two counters (skill set, stats) so the proxy can notice a change with
one `stat()` instead of a LanceDB query. Writes are serialized by an exclusive file lock: LanceDB
gives duplicate ids when processes `merge_insert` concurrently (stack-notes §5). What a row of each
table holds, and its conversion to and from `Skill`, is `metaclaw/skills/tables.py`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import lancedb
import pyarrow as pa
from lancedb.index import FTS

from metaclaw.skills import embedding as _embedding
from metaclaw.skills.model import Skill, SkillValidationError, parse_ref
from metaclaw.skills.tables import (
    ADDED_COLUMNS,
    CHANGES,
    CHANGES_SCHEMA,
    EVOLVE_LOG,
    EVOLVE_LOG_SCHEMA,
    ROW_COLUMNS,
    SKILLS,
    STATE_FILE,
    STATS,
    STATS_SCHEMA,
    row_to_skill,
    skill_model,
    skill_to_row,
    sql_literal,
)

EVENTS = ("created", "updated", "retired", "restored", "merged", "promoted", "rejected")
LIVE = ("active", "proposed")  # statuses the proxy may inject (a proposal only in its scope)


class SkillNotFoundError(LookupError):
    pass


@dataclass(frozen=True)
class Change:
    """One lifecycle step to commit: the row written (or whose status changes) and why."""

    event: str  # created | updated | retired | restored | merged
    skill: Skill
    reason: str = ""
    diagnosis_id: str | None = None
    status: str | None = None  # for `retired`: "superseded" when merged into another skill


@dataclass
class CommitResult:
    set_version: int
    changes: list[Change] = field(default_factory=list)

    def event_rows(self) -> list[dict[str, Any]]:
        """Ledger `skill_events` rows for the changes (stable ids: re-recording is harmless)."""
        rows = []
        for ch in self.changes:
            s = ch.skill
            key = f"{s.skill_id}\x1f{s.version}\x1f{ch.event}\x1f{self.set_version}"
            rows.append(
                {
                    "event_id": hashlib.sha256(key.encode()).hexdigest()[:32],
                    "skill_id": s.skill_id,
                    "version": s.version,
                    "event": "updated" if ch.event == "restored" else ch.event,  # restore: by hand
                    "diagnosis_id": ch.diagnosis_id
                    or (s.diagnosis_ids[0] if s.diagnosis_ids else None),
                    "parent_version": s.parent_version,
                    "merged_from": list(s.merged_from) or None,
                    "skill_set_version": self.set_version,
                    "ts": datetime.now(UTC),
                    "reason": ch.reason or None,
                }
            )
        return rows


class SkillStore:
    """Reads and serialized writes of the LanceDB skill library."""

    def __init__(
        self,
        root: Path,
        *,
        embedding: str = "static-minilm",
        embeddings_dir: Path | None = None,
        uri: str | None = None,
        storage_options: dict[str, str] | None = None,
    ) -> None:
        """`root`: a local directory for the writer lock and `state.json` (and the tables,
        unless `uri` puts them elsewhere, e.g. `s3://bucket/skills`)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = uri or str(self.root)
        self.remote = "://" in self.uri and not self.uri.startswith("file://")
        self.embedding = embedding
        self.embedder = _embedding.get_embedder(
            embedding, embeddings_dir or self.root.parent / "embeddings"
        )
        self.db = lancedb.connect(self.uri, storage_options=storage_options or None)
        self._model = skill_model(embedding)
        existing = set(self.db.list_tables().tables)
        if SKILLS not in existing:
            self.db.create_table(SKILLS, schema=self._model, exist_ok=True)
        if CHANGES not in existing:
            self.db.create_table(CHANGES, schema=CHANGES_SCHEMA, exist_ok=True)
        self.skills = self.db.open_table(SKILLS)
        self.changes = self.db.open_table(CHANGES)
        self._check_embedding()
        self._migrate()

    def _migrate(self) -> None:
        """Add the lifecycle columns to a library written before they existed (null there)."""
        if all(n in self.skills.schema.names for n, _ in ADDED_COLUMNS):
            return
        with self.writing():
            names = set(self.skills.schema.names)
            missing = [pa.field(n, t) for n, t in ADDED_COLUMNS if n not in names]
            if missing:
                self.skills.add_columns(missing)

    @classmethod
    def open(cls, settings: Any) -> SkillStore:
        """The library of a `Settings`: tables at `paths.skills_uri` (local, or an object store
        via `ledger.skills_root`), lock and state under `paths.skills`."""
        paths = settings.paths
        uri = getattr(paths, "skills_uri", None) or str(paths.skills)
        options: dict[str, str] = {}
        if "://" in uri:
            from metaclaw.ledger.storage import lancedb_storage_options

            options = lancedb_storage_options(uri)
        return cls(
            paths.skills,
            embedding=settings.skills.embedding,
            embeddings_dir=settings.skills.embeddings_dir or paths.embeddings,
            uri=uri,
            storage_options=options,
        )

    def _check_embedding(self) -> None:
        meta = (self.skills.schema.metadata or {}).get(b"embedding_functions", b"")
        wanted = _embedding.REGISTRY_NAMES[self.embedding].encode()
        if meta and wanted not in meta:
            raise SkillValidationError(
                f"the skill library at {self.uri} was embedded with another function "
                f"({meta.decode()[:120]}); set skills.embedding back or re-import the skills "
                "into a fresh METACLAW_HOME"
            )

    # -- counters ----------------------------------------------------------------------------
    @property
    def state_path(self) -> Path:
        return self.root / STATE_FILE

    def read_state(self) -> dict[str, int]:
        """The counters. On an object store writers on other machines never touch this
        machine's `state.json`, so they are read from the tables themselves."""
        if self.remote:
            return {
                "skill_set_version": self._max_set_version(),
                "stats_version": self._stats_table_version(),
            }
        try:
            data = json.loads(self.state_path.read_text())
            return {
                "skill_set_version": int(data["skill_set_version"]),
                "stats_version": int(data.get("stats_version", 0)),
            }
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return {"skill_set_version": self._max_set_version(), "stats_version": 0}

    def _stats_table_version(self) -> int:
        if STATS not in set(self.db.list_tables().tables):
            return 0
        return int(self.db.open_table(STATS).version)

    def signature(self) -> tuple[Any, ...]:
        """Changes whenever the library does: what the proxy polls (off its hot path)."""
        if self.remote:
            self.skills.checkout_latest()
            self.changes.checkout_latest()
            return (self.skills.version, self.changes.version, self._stats_table_version())
        try:
            st = self.state_path.stat()
        except FileNotFoundError:
            return ()
        return (st.st_mtime_ns, st.st_size)

    def _max_set_version(self) -> int:
        if self.changes.count_rows() == 0:
            return 0
        col = self.changes.search().select(["set_version"]).limit(None).to_arrow()["set_version"]
        return int(pa.compute.max(col).as_py() or 0)

    @property
    def skill_set_version(self) -> int:
        return self.read_state()["skill_set_version"]

    def _write_state(self, **updates: int) -> None:
        state = {**self.read_state(), **updates, "updated_at": datetime.now(UTC).isoformat()}
        tmp = self.state_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Exclusive across processes: one writer at a time (LanceDB upserts race)."""
        with open(self.root / ".writer.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                self.skills.checkout_latest()
                self.changes.checkout_latest()
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    # -- reads -------------------------------------------------------------------------------
    def _rows(
        self, where: str | None = None, columns: Sequence[str] = ROW_COLUMNS, table: Any = None
    ) -> list[dict[str, Any]]:
        tbl = table if table is not None else self.skills
        tbl.checkout_latest()
        query = tbl.search().select(list(columns)).limit(None)
        if where:
            query = query.where(where)
        return query.to_arrow().to_pylist()

    def all_versions(self, where: str | None = None) -> list[Skill]:
        return [row_to_skill(r) for r in self._rows(where)]

    def current(self, status: str | None = None) -> list[Skill]:
        """The current (highest) version of every skill, optionally of one status, by name."""
        latest: dict[str, Skill] = {}
        for skill in self.all_versions():
            held = latest.get(skill.skill_id)
            if held is None or skill.version > held.version:
                latest[skill.skill_id] = skill
        out = [s for s in latest.values() if status is None or s.status == status]
        return sorted(out, key=lambda s: s.name)

    def live(self) -> list[Skill]:
        """Every row the proxy may inject: the active version of each skill and any proposed
        one (a proposal stands beside the active version it would replace until promoted)."""
        where = "status IN (" + ", ".join(sql_literal(s) for s in LIVE) + ")"
        return sorted(self.all_versions(where), key=lambda s: (s.name, s.version))

    def history(self, skill_id: str) -> list[Skill]:
        return sorted(
            self.all_versions(f"skill_id = {sql_literal(skill_id)}"), key=lambda s: s.version
        )

    def get(self, key: str, agent_id: str | None = None) -> Skill:
        """A skill by `skill_id@version`, skill id, or name (the current version of the last
        two), of `agent_id`'s library when given; SkillNotFoundError names what was looked for.
        A name several agents' libraries hold is ambiguous without `agent_id`: acting on
        whichever has the higher version would touch another agent's skill by surprise."""
        if "@" in key:
            skill_id, version = parse_ref(key)
            rows = self.all_versions(f"skill_id = {sql_literal(skill_id)} AND version = {version}")
        else:
            rows = self.all_versions(f"skill_id = {sql_literal(key)} OR name = {sql_literal(key)}")
            if agent_id is None and len({s.agent_id for s in rows}) > 1:
                agents = ", ".join(sorted({s.agent_id for s in rows}))
                raise SkillNotFoundError(
                    f"skill {key!r} is in several agents' libraries ({agents}): give its skill "
                    "id (`metaclaw skills list`) or the agent"
                )
        if agent_id is not None:
            rows = [s for s in rows if s.agent_id == agent_id]
        if "@" not in key and rows:
            rows = [max(rows, key=lambda s: s.version)]
        if not rows:
            raise SkillNotFoundError(f"no skill {key!r} (give a name, a skill id or id@version)")
        return rows[0]

    def find(self, key: str) -> Skill | None:
        try:
            return self.get(key)
        except SkillNotFoundError:
            return None

    def vectors(self, refs: Sequence[str]) -> dict[str, Any]:
        """Stored vectors of some skill versions (ref → numpy array)."""
        if not refs:
            return {}
        where = "row_id IN (" + ", ".join(sql_literal(r) for r in refs) + ")"
        rows = self._rows(where, columns=("row_id", "vector"))
        import numpy as np

        return {r["row_id"]: np.asarray(r["vector"], dtype=np.float32) for r in rows}

    def active_arrow(self) -> pa.Table:
        """Every live (active or proposed) row with its vector, for the retrieval index."""
        self.skills.checkout_latest()
        cols = [*ROW_COLUMNS, "vector"]
        where = "status IN (" + ", ".join(sql_literal(s) for s in LIVE) + ")"
        return self.skills.search().where(where).select(cols).limit(None).to_arrow()

    def stats_rows(self) -> list[dict[str, Any]]:
        if STATS not in set(self.db.list_tables().tables):
            return []
        return self._rows(columns=STATS_SCHEMA.names, table=self.db.open_table(STATS))

    def search(
        self, text: str, limit: int = 10, *, include_inactive: bool = False
    ) -> list[tuple[Skill, float]]:
        """LanceDB's own hybrid search (vector + BM25, RRF): for the CLI and the critic's
        "nearest skills". The proxy's hot path uses the in-memory index instead (bench)."""
        self.skills.checkout_latest()
        if self.skills.count_rows() == 0:
            return []
        where = None if include_inactive else "status = 'active'"
        vec = self.embedder.embed_one(text)
        try:
            query = self.skills.search(query_type="hybrid").vector(vec).text(text)
        except Exception:  # no FTS index yet (empty library): vector only
            query = self.skills.search(vec)
        if where:
            query = query.where(where, prefilter=True)
        try:
            rows = query.select([*ROW_COLUMNS]).limit(limit).to_arrow().to_pylist()
        except Exception:
            rows = (
                self.skills.search(vec)
                .where(where or "true", prefilter=True)
                .select([*ROW_COLUMNS])
                .limit(limit)
                .to_arrow()
                .to_pylist()
            )
        out = []
        for row in rows:
            score = row.get("_relevance_score", None)
            if score is None:
                score = 1.0 - float(row.get("_distance", 1.0)) / 2
            out.append((row_to_skill(row), float(score)))
        return out

    # -- writes ------------------------------------------------------------------------------
    def commit(self, changes: Sequence[Change]) -> CommitResult:
        """Apply changes under the writer lock as one new skill-set version.

        `created`/`updated`/`merged` write the change's skill as a new row. An active row
        supersedes every live row of that skill; a `proposed` one supersedes only an older
        proposal, so the active version keeps serving everyone while the proposal is on trial.
        `promoted` makes a proposed row active (superseding the skill's other live rows and the
        skills it merged); `rejected` ends a proposal; `retired` ends every live row of the
        skill; `restored` makes the current row active and pinned. Rejected and retired are
        sticky: only `restored` (a person) brings such a skill back.
        """
        if not changes:
            return CommitResult(self.skill_set_version)
        for ch in changes:
            if ch.event not in EVENTS:
                raise ValueError(f"unknown skill change {ch.event!r}; one of {EVENTS}")
        with self.writing():
            set_version = self._max_set_version() + 1
            stamp = datetime.now(UTC)
            rows_of: dict[str, list[dict[str, Any]]] = {}  # skill_id -> its rows
            for row in self._rows(columns=("row_id", "skill_id", "version", "status")):
                rows_of.setdefault(row["skill_id"], []).append(row)
            new_rows: list[dict[str, Any]] = []
            status_of: dict[str, tuple[str, bool | None]] = {}  # row_id -> (status, pinned)
            done: list[Change] = []

            def end(skill_id: str, statuses: tuple[str, ...], keep: str = "") -> None:
                for row in rows_of.get(skill_id, []):
                    if row["status"] in statuses and row["row_id"] != keep:
                        status_of[row["row_id"]] = ("superseded", None)
                        row["status"] = "superseded"

            for ch in changes:
                skill = replace(ch.skill, set_version=set_version, updated_at=stamp)
                held = max(
                    rows_of.get(skill.skill_id, []), key=lambda r: r["version"], default=None
                )
                if ch.event in ("created", "updated", "merged"):
                    if held is not None and skill.version <= held["version"]:
                        raise SkillValidationError(
                            f"{skill.ref} exists already: versions are immutable"
                        )
                    expected = held["version"] + 1 if held else 1
                    if skill.version != expected:
                        raise SkillValidationError(
                            f"{skill.name}: next version must be {expected}, got {skill.version}"
                        )
                    end(skill.skill_id, LIVE if skill.status == "active" else ("proposed",))
                    new_rows.append(skill_to_row(skill))
                    rows_of.setdefault(skill.skill_id, []).append(
                        {
                            "row_id": skill.ref,
                            "skill_id": skill.skill_id,
                            "version": skill.version,
                            "status": skill.status,
                        }
                    )
                elif ch.event in ("promoted", "rejected"):
                    current = self.get(skill.ref)
                    if current.status != "proposed":
                        raise SkillValidationError(
                            f"{current.name} v{current.version} is {current.status}, not proposed"
                        )
                    status = "active" if ch.event == "promoted" else "rejected"
                    if ch.event == "promoted":
                        end(skill.skill_id, LIVE, keep=current.ref)
                        for merged in current.merged_from:
                            end(merged, LIVE)
                    status_of[current.ref] = (status, None)
                    skill = replace(current, status=status, updated_at=stamp)
                else:
                    if held is None:
                        raise SkillNotFoundError(f"no skill {skill.skill_id!r} to {ch.event}")
                    current = self.get(held["row_id"])
                    if ch.event == "retired":
                        status, pinned = (ch.status or "retired"), current.pinned
                        for row in rows_of[skill.skill_id]:
                            if row["status"] in LIVE:
                                status_of[row["row_id"]] = (status, pinned)
                    else:
                        status, pinned = "active", True
                        end(skill.skill_id, LIVE, keep=current.ref)
                    status_of[current.ref] = (status, pinned)
                    skill = replace(current, status=status, pinned=pinned, updated_at=stamp)
                done.append(replace(ch, skill=skill))
            self._set_statuses(status_of, stamp)
            if new_rows:
                self.skills.add(new_rows)
            self.changes.add(
                pa.Table.from_pylist(
                    [
                        {
                            "set_version": set_version,
                            "ts": stamp,
                            "event": ch.event,
                            "skill_id": ch.skill.skill_id,
                            "version": ch.skill.version,
                            "reason": ch.reason,
                        }
                        for ch in done
                    ],
                    schema=CHANGES_SCHEMA,
                )
            )
            self._ensure_fts()
            self._write_state(skill_set_version=set_version)
        return CommitResult(set_version, done)

    def _set_statuses(self, status_of: dict[str, tuple[str, bool | None]], stamp: datetime) -> None:
        """One `update` per distinct (status, pinned): few LanceDB versions per commit."""
        groups: dict[tuple[str, bool | None], list[str]] = {}
        for row_id, key in status_of.items():
            groups.setdefault(key, []).append(row_id)
        for (status, pinned), row_ids in groups.items():
            values: dict[str, Any] = {"status": status, "updated_at": stamp}
            if pinned is not None:
                values["pinned"] = pinned
            where = "row_id IN (" + ", ".join(sql_literal(r) for r in row_ids) + ")"
            self.skills.update(where=where, values=values)

    def _ensure_fts(self) -> None:
        names = {idx.name for idx in self.skills.list_indices()}
        if "search_text_idx" not in names and self.skills.count_rows() > 0:
            self.skills.create_index("search_text", config=FTS(with_position=False))

    def write_stats(self, rows: list[dict[str, Any]]) -> None:
        """Replace the efficacy statistics and tell readers (stats_version + 1)."""
        with self.writing():
            table = pa.Table.from_pylist(rows, schema=STATS_SCHEMA)
            self.db.create_table(STATS, table, mode="overwrite")
            self._write_state(stats_version=self.read_state()["stats_version"] + 1)

    def considered(self, critic_model: str, prompt_version: str) -> set[str]:
        """Diagnoses the evolve flow has already put to this critic and prompt version."""
        if EVOLVE_LOG not in set(self.db.list_tables().tables):
            return set()
        where = (
            f"critic_model = {sql_literal(critic_model)} "
            f"AND prompt_version = {sql_literal(prompt_version)}"
        )
        rows = self._rows(where, columns=("diagnosis_id",), table=self.db.open_table(EVOLVE_LOG))
        return {r["diagnosis_id"] for r in rows}

    def log_considered(
        self, outcomes: dict[str, str], critic_model: str, prompt_version: str
    ) -> None:
        if not outcomes:
            return
        stamp = datetime.now(UTC)
        table = pa.Table.from_pylist(
            [
                {
                    "diagnosis_id": d,
                    "critic_model": critic_model,
                    "prompt_version": prompt_version,
                    "outcome": o,
                    "ts": stamp,
                }
                for d, o in sorted(outcomes.items())
            ],
            schema=EVOLVE_LOG_SCHEMA,
        )
        with self.writing():
            if EVOLVE_LOG in set(self.db.list_tables().tables):
                self.db.open_table(EVOLVE_LOG).add(table)
            else:
                self.db.create_table(EVOLVE_LOG, table)

    def optimize(self) -> None:
        """Compact small files and fold new rows into the FTS index (after a batch)."""
        with self.writing():
            for tbl in (self.skills, self.changes):
                tbl.optimize(cleanup_older_than=timedelta(hours=1))
