"""The skill library's LanceDB tables: names, schemas, and rows to and from `Skill`.

Why apart from `store.py`: the store decides what a commit writes and when (locking, versions,
statuses); this module only says what a row looks like, so a column is added in one place
(`ROW_COLUMNS`, the row model, `skill_to_row`, `row_to_skill`; `ADDED_COLUMNS` migrates older
libraries) and the conversions are tested without a database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from lancedb.embeddings import get_registry
from lancedb.pydantic import LanceModel, Vector

from metaclaw.ledger.schemas import DEFAULT_AGENT
from metaclaw.skills import embedding as _embedding  # registers the embedding functions
from metaclaw.skills.model import Skill

SKILLS = "skills"
CHANGES = "skill_changes"
STATS = "skill_stats"
EVOLVE_LOG = "evolve_log"
STATE_FILE = "state.json"
ROW_COLUMNS = (
    "row_id",
    "skill_id",
    "name",
    "version",
    "description",
    "instructions",
    "when_to_use",
    "category",
    "composes",
    "status",
    "pinned",
    "diagnosis_ids",
    "parent_version",
    "merged_from",
    "author",
    "content_hash",
    "set_version",
    "created_at",
    "updated_at",
    "origin_sessions",
    "scan",
    "agent_id",
)
# columns added after the first release: (name, type) added all-null to an older library
# (an older library's skills have a null `agent_id`: they are the `default` agent's)
ADDED_COLUMNS = (
    ("origin_sessions", pa.list_(pa.string())),
    ("scan", pa.string()),
    ("agent_id", pa.string()),
)


def skill_model(kind: str) -> type[LanceModel]:
    """The `skills` row model embedding `search_text` with the `kind` embedding function."""
    func = get_registry().get(_embedding.REGISTRY_NAMES[kind]).create()

    class SkillRow(LanceModel):
        row_id: str
        skill_id: str
        name: str
        version: int
        description: str
        instructions: str
        when_to_use: str
        category: str
        composes: list[str]
        status: str
        pinned: bool
        diagnosis_ids: list[str]
        parent_version: int | None
        merged_from: list[str]
        author: str
        content_hash: str
        set_version: int
        created_at: datetime
        updated_at: datetime
        origin_sessions: list[str] | None = None
        scan: str | None = None
        agent_id: str | None = None
        search_text: str = func.SourceField()
        vector: Vector(_embedding.DIM) = func.VectorField()  # type: ignore[valid-type]

    return SkillRow


CHANGES_SCHEMA = pa.schema(
    [
        ("set_version", pa.int64()),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("event", pa.string()),
        ("skill_id", pa.string()),
        ("version", pa.int32()),
        ("reason", pa.string()),
    ]
)
STATS_SCHEMA = pa.schema(
    [
        ("ref", pa.string()),
        ("skill_id", pa.string()),
        ("version", pa.int32()),
        ("uses", pa.int64()),
        ("successes", pa.float64()),
        ("failures", pa.float64()),
        ("mean_with", pa.float64()),
        ("n_without", pa.int64()),
        ("mean_without", pa.float64()),
        ("effect", pa.float64()),
        ("effect_se", pa.float64()),
        ("updated_at", pa.timestamp("us", tz="UTC")),
    ]
)
EVOLVE_LOG_SCHEMA = pa.schema(
    [
        ("diagnosis_id", pa.string()),
        ("critic_model", pa.string()),
        ("prompt_version", pa.string()),
        ("outcome", pa.string()),
        ("ts", pa.timestamp("us", tz="UTC")),
    ]
)


def sql_literal(value: str) -> str:
    """`value` as a quoted SQL string literal (LanceDB filters are SQL text)."""
    return "'" + value.replace("'", "''") + "'"


def row_to_skill(row: dict[str, Any]) -> Skill:
    """A `skills` row as a `Skill` (older rows: missing added columns read as empty)."""

    def ts(value: Any) -> datetime:
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        return datetime.now(UTC)

    return Skill(
        skill_id=row["skill_id"],
        name=row["name"],
        version=int(row["version"]),
        description=row["description"],
        instructions=row["instructions"],
        when_to_use=row["when_to_use"] or "",
        category=row["category"] or "general",
        composes=tuple(row["composes"] or ()),
        status=row["status"],
        pinned=bool(row["pinned"]),
        diagnosis_ids=tuple(row["diagnosis_ids"] or ()),
        parent_version=row["parent_version"],
        merged_from=tuple(row["merged_from"] or ()),
        author=row["author"] or "",
        created_at=ts(row["created_at"]),
        updated_at=ts(row["updated_at"]),
        set_version=int(row["set_version"] or 0),
        origin_sessions=tuple(row.get("origin_sessions") or ()),
        scan=row.get("scan") or "",
        agent_id=row.get("agent_id") or DEFAULT_AGENT,
    )


def skill_to_row(skill: Skill) -> dict[str, Any]:
    """The `skills` row of a version (embedded by the table's function on `add`)."""
    return {
        "row_id": skill.ref,
        "skill_id": skill.skill_id,
        "name": skill.name,
        "version": skill.version,
        "description": skill.description,
        "instructions": skill.instructions,
        "when_to_use": skill.when_to_use,
        "category": skill.category,
        "composes": list(skill.composes),
        "status": skill.status,
        "pinned": skill.pinned,
        "diagnosis_ids": list(skill.diagnosis_ids),
        "parent_version": skill.parent_version,
        "merged_from": list(skill.merged_from),
        "author": skill.author,
        "content_hash": skill.content_hash,
        "set_version": skill.set_version,
        "created_at": skill.created_at,
        "updated_at": skill.updated_at,
        "origin_sessions": list(skill.origin_sessions),
        "scan": skill.scan,
        "agent_id": skill.agent_id,
        "search_text": skill.search_text,
    }
