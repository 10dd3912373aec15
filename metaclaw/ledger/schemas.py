"""The ledger's tables: the single source of truth for every column.

Every table is append-only, every row has a stable id (`TableSpec.id_column`), and every table
is partitioned by the UTC date of its time column, so Parquet files land under
`<table>/date=YYYY-MM-DD/`. Columns holding JSON documents are stored as UTF-8 text in Parquet
and exposed as DuckDB `JSON` in the views. docs/architecture.md renders these schemas with their
`COLUMN_NOTES` (the one place a column is explained); the test `test_schemas_documented` fails
when the two drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")
PARTITION_COLUMN = "date"
DEFAULT_AGENT = "default"
"""The agent of every row when no agents are configured, and of rows written before agents
existed (their `agent_id` is NULL, or the column is absent from their Parquet files)."""


@dataclass(frozen=True)
class TableSpec:
    """A ledger table: its Arrow schema and the columns with a special role."""

    name: str
    schema: pa.Schema
    id_column: str
    time_column: str
    json_columns: tuple[str, ...] = ()
    # (column, value) of columns added after rows were written without them: readers see the
    # value where the row holds NULL (reader views, point lookups), so no file is rewritten
    read_defaults: tuple[tuple[str, str], ...] = ()

    def partition_value(self, row: dict[str, Any]) -> str:
        """The `date=` partition of a row, from its time column (epoch µs or datetime)."""
        value = row.get(self.time_column)
        if value is None:
            return "unknown"
        if isinstance(value, datetime):
            return value.astimezone(UTC).strftime("%Y-%m-%d")
        return datetime.fromtimestamp(value / 1_000_000, UTC).strftime("%Y-%m-%d")


def _schema(*fields: tuple[str, pa.DataType] | tuple[str, pa.DataType, bool]) -> pa.Schema:
    return pa.schema([pa.field(f[0], f[1], nullable=f[2] if len(f) == 3 else True) for f in fields])


TURNS = TableSpec(
    name="turns",
    id_column="turn_id",
    time_column="ts_start",
    json_columns=("request", "response", "tool_calls", "usage"),
    schema=_schema(
        ("turn_id", pa.string(), False),
        ("session_id", pa.string(), False),
        ("turn_index", pa.int32()),
        ("ts_start", TS, False),
        ("ts_end", TS),
        ("client", pa.string()),
        ("endpoint", pa.string()),
        ("request", pa.string()),
        ("injected_skills", pa.list_(pa.string())),
        ("skill_set_version", pa.int64()),
        ("served_by", pa.string()),
        ("model", pa.string()),
        ("policy_checkpoint", pa.string()),
        ("response", pa.string()),
        ("completion_text", pa.string()),
        ("tool_calls", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_token_ids", pa.list_(pa.int32())),
        ("completion_token_ids", pa.list_(pa.int32())),
        ("completion_logprobs", pa.list_(pa.float32())),
        ("usage", pa.string()),
        ("latency_ms", pa.float64()),
        ("ttft_ms", pa.float64()),
        ("stream", pa.bool_()),
        ("status", pa.string()),
        ("http_status", pa.int32()),
        ("error", pa.string()),
        ("source", pa.string()),
        ("sampling_temperature", pa.float64()),
        ("sampling_top_p", pa.float64()),
        ("injected_text", pa.string()),
        ("agent_id", pa.string()),
    ),
    read_defaults=(("agent_id", DEFAULT_AGENT),),
)

FEEDBACK = TableSpec(
    name="feedback",
    id_column="feedback_id",
    time_column="ts",
    schema=_schema(
        ("feedback_id", pa.string(), False),
        ("turn_id", pa.string()),
        ("session_id", pa.string()),
        ("value", pa.float64(), False),
        ("comment", pa.string()),
        ("ts", TS, False),
        ("agent_id", pa.string()),
    ),
    read_defaults=(("agent_id", DEFAULT_AGENT),),
)

REWARDS = TableSpec(
    name="rewards",
    id_column="reward_id",
    time_column="ts",
    json_columns=("votes",),
    schema=_schema(
        ("reward_id", pa.string(), False),
        ("turn_id", pa.string(), False),
        ("signal", pa.string(), False),
        ("value", pa.float64(), False),
        ("votes", pa.string()),
        ("reason", pa.string()),
        ("scorer_version", pa.string()),
        ("ts", TS, False),
    ),
)

DIAGNOSES = TableSpec(
    name="diagnoses",
    id_column="diagnosis_id",
    time_column="ts",
    json_columns=("evidence",),
    schema=_schema(
        ("diagnosis_id", pa.string(), False),
        ("turn_ids", pa.list_(pa.string())),
        ("root_cause_category", pa.string()),
        ("explanation", pa.string()),
        ("critic_model", pa.string()),
        ("ts", TS, False),
        ("session_id", pa.string()),
        ("evidence", pa.string()),
        ("prompt_version", pa.string()),
    ),
)

SKILL_EVENTS = TableSpec(
    name="skill_events",
    id_column="event_id",
    time_column="ts",
    schema=_schema(
        ("event_id", pa.string(), False),
        ("skill_id", pa.string(), False),
        ("version", pa.int32()),
        ("event", pa.string(), False),
        ("diagnosis_id", pa.string()),
        ("parent_version", pa.int32()),
        ("merged_from", pa.list_(pa.string())),
        ("skill_set_version", pa.int64()),
        ("ts", TS, False),
        ("reason", pa.string()),
    ),
)

TRAIN_STEPS = TableSpec(
    name="train_steps",
    id_column="step_id",
    time_column="ts",
    json_columns=("metrics",),
    schema=_schema(
        ("step_id", pa.string(), False),
        ("step", pa.int64(), False),
        ("backend", pa.string()),
        ("base_model", pa.string()),
        ("loss_fn", pa.string()),
        ("turn_ids", pa.list_(pa.string())),
        ("metrics", pa.string()),
        ("ts", TS, False),
    ),
)

CHECKPOINTS = TableSpec(
    name="checkpoints",
    id_column="event_id",
    time_column="ts",
    json_columns=("eval_metrics",),
    schema=_schema(
        ("event_id", pa.string(), False),
        ("checkpoint_id", pa.string(), False),
        ("step", pa.int64()),
        ("backend", pa.string()),
        ("path", pa.string()),
        ("status", pa.string(), False),
        ("eval_metrics", pa.string()),
        ("reason", pa.string()),
        ("ts", TS, False),
        ("actor", pa.string()),
        ("previous_checkpoint_id", pa.string()),
    ),
)

MODEL_CALLS = TableSpec(
    name="model_calls",
    id_column="call_id",
    time_column="ts",
    schema=_schema(
        ("call_id", pa.string(), False),
        ("ts", TS, False),
        ("role", pa.string(), False),
        ("model", pa.string()),
        ("turn_id", pa.string()),
        ("input_tokens", pa.int64()),
        ("output_tokens", pa.int64()),
        ("local", pa.bool_()),
    ),
)

# The notes of the generated docs (docs/architecture.md): the one place a column is explained.
# tests/unit/test_schemas.py fails on a note for a column that does not exist.
COLUMN_NOTES: dict[tuple[str, str], str] = {
    ("turns", "client"): "openai or anthropic: the API the client spoke",
    ("turns", "endpoint"): "/v1/chat/completions or /v1/messages; backfill for imported turns",
    ("turns", "request"): "the body exactly as the client sent it (imported: model, messages, "
    "tools rebuilt from the log)",
    ("turns", "injected_skills"): "skill_id@version",
    ("turns", "served_by"): "upstream or policy",
    ("turns", "policy_checkpoint"): "null when served by the upstream",
    ("turns", "response"): "what the client received (a stream reassembled), in its API's shape",
    ("turns", "tool_calls"): "an array in OpenAI shape, whatever the client API",
    ("turns", "finish_reason"): "OpenAI vocabulary (stop, length, tool_calls, ...)",
    ("turns", "prompt_token_ids"): "only for turns served by our policy",
    ("turns", "usage"): "token counts under OpenAI's names (prompt_tokens, completion_tokens, ...)",
    ("turns", "status"): "ok, upstream_error, client_error or disconnected",
    ("turns", "http_status"): "status sent to the client (499: client hung up)",
    ("turns", "source"): "live or backfill:<format>",
    ("turns", "sampling_temperature"): "T the policy sampled at (its trace); null if upstream",
    ("turns", "sampling_top_p"): "top_p the policy sampled with (its trace); null if upstream",
    ("turns", "injected_text"): "skills block appended to the system prompt; null when none "
    "(served messages = skills.query.inject(request messages, injected_text))",
    ("turns", "agent_id"): "the agent whose key the request carried (docs/agents.md); rows "
    "written before agents read as default",
    ("feedback", "value"): "-1 .. 1",
    ("feedback", "agent_id"): "the agent whose key posted it: always the agent of its turn; "
    "rows written before agents read as default",
    ("rewards", "reward_id"): "hash of (turn_id, signal, scorer_version)",
    ("rewards", "scorer_version"): "what produced the value: judge/<model>/<prompt>/m<votes>, "
    "the implicit version, or rm/<features>/<digest> (the reward model version)",
    ("rewards", "signal"): "judge, reward_model, implicit:<kind> or explicit",
    ("skill_events", "event"): "created, updated (a restore too), retired, merged, promoted or "
    "rejected",
    ("diagnoses", "diagnosis_id"): "hash of (sorted turn_ids, critic_model, prompt_version)",
    ("diagnoses", "evidence"): "JSON array of {turn_id, quote, note}",
    ("train_steps", "metrics"): "loss, kl, reward_mean, tokens, ..., config (the settings used)",
    ("checkpoints", "event_id"): "one row per state change; the latest row is the state",
    ("checkpoints", "status"): "candidate, promoted, superseded, rejected or rolled_back",
    ("checkpoints", "actor"): "who changed the state: deploy-flow, cli:<user>, ...",
    ("checkpoints", "previous_checkpoint_id"): "on a promotion: the checkpoint it replaced",
    ("checkpoints", "path"): "local directory or tinker://...",
    ("model_calls", "role"): "judge or critic: the pipeline's own calls (users' are `turns`)",
    ("model_calls", "turn_id"): "the turn the call was about (a critic call about several: the "
    "first); null for a call about no turn (a skill's intent scan)",
    ("model_calls", "input_tokens"): "from the response's usage; null when it gave none usable",
    ("model_calls", "local"): "answered by our own policy server: costs 0",
}

TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TURNS,
        FEEDBACK,
        REWARDS,
        DIAGNOSES,
        SKILL_EVENTS,
        TRAIN_STEPS,
        CHECKPOINTS,
        MODEL_CALLS,
    )
}


def table(name: str) -> TableSpec:
    """Look a table up by name, with an error that lists the valid names."""
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown ledger table {name!r}; tables are: {', '.join(TABLES)}") from None


def render_markdown() -> str:
    """The tables as markdown, for docs/architecture.md (a test keeps the two identical)."""
    out = []
    for spec in TABLES.values():
        out.append(f"### `{spec.name}`\n")
        out.append(f"id `{spec.id_column}` · partitioned by `date` of `{spec.time_column}`\n")
        out.append("| column | type | null | notes |\n|---|---|---|---|")
        for field in spec.schema:
            kind = "JSON" if field.name in spec.json_columns else str(field.type)
            out.append(
                f"| `{field.name}` | {kind} | {'yes' if field.nullable else 'no'} | "
                f"{COLUMN_NOTES.get((spec.name, field.name), '')} |"
            )
        out.append("")
    return "\n".join(out)


def write_docs(path: Path) -> None:
    """Replace the schemas block of docs/architecture.md with the current schemas."""
    text = path.read_text()
    begin, end = "<!-- schemas:begin -->\n", "<!-- schemas:end -->"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(head + begin + render_markdown() + "\n" + end + tail)


if __name__ == "__main__":
    write_docs(Path(__file__).resolve().parents[2] / "docs" / "architecture.md")
