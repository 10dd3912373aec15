"""Query the ledger through DuckDB: one view per table over Parquet plus not-yet-ingested WAL.

A fresh in-memory connection per use, so readers never hold a lock that blocks writers. The WAL
is read *before* the manifest: a segment ingested in between shows up in the manifest's list of
ingested segments and its WAL rows are dropped, so no row is ever missed or seen twice.
"""

from __future__ import annotations

from collections import defaultdict

import duckdb
import pyarrow as pa

from metaclaw.config import LedgerPaths
from metaclaw.ledger.coerce import coerce_rows
from metaclaw.ledger.records import Row, decode_lines, rows_to_table, unique_by_id
from metaclaw.ledger.schemas import TABLES, TableSpec
from metaclaw.ledger.storage import open_storage
from metaclaw.ledger.views import CONNECTION_SETUPS, DERIVED_VIEWS
from metaclaw.ledger.wal import list_segments


def read_wal(paths: LedgerPaths) -> dict[str, dict[str, list[Row]]]:
    """table -> segment name -> rows, including the active segments of running writers."""
    out: dict[str, dict[str, list[Row]]] = defaultdict(lambda: defaultdict(list))
    for seg in list_segments(paths.wal):
        try:
            data = seg.read_bytes()
        except FileNotFoundError:  # ingested and deleted since listing
            continue
        for table_name, row in decode_lines(data):
            out[table_name][seg.name].append(row)
    return out


def _sql_text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _sql_list(values: list[str]) -> str:
    return "[" + ", ".join(_sql_text(v) for v in values) + "]"


def _view_sql(spec: TableSpec, parquet: str, wal: str | None) -> str:
    body = f"SELECT * FROM {parquet}"
    if wal is not None:
        body += (
            f" UNION ALL BY NAME SELECT * FROM {wal} WHERE {spec.id_column} NOT IN "
            f"(SELECT {spec.id_column} FROM {parquet})"
        )
    # TRY_CAST: text that is not JSON (an old file, written before values were coerced) reads
    # as NULL instead of failing every query on the table.
    casts = [f"TRY_CAST({c} AS JSON) AS {c}" for c in spec.json_columns]
    # a column added later reads as its default in rows written without it (schemas.py)
    casts += [f"COALESCE({c}, {_sql_text(v)}) AS {c}" for c, v in spec.read_defaults]
    if casts:
        return f"SELECT * REPLACE ({', '.join(casts)}) FROM ({body})"
    return body


def connect(paths: LedgerPaths, *, include_wal: bool = True) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with a view per ledger table."""
    wal = read_wal(paths) if include_wal else {}
    store = open_storage(paths)
    manifest = store.load_manifest()
    ingested = set(manifest.segments)
    con = duckdb.connect()
    store.register(con)  # object stores: DuckDB reads through fsspec
    for spec in TABLES.values():
        files = [store.url(f) for f in manifest.files.get(spec.name, [])]
        parquet = f"_{spec.name}_parquet"
        empty = f"_{spec.name}_schema"
        con.register(empty, _empty(spec))
        if files:
            # The empty table of the current schema first: every schema column exists (NULL
            # where a file written before the column was added lacks it), in schema order.
            con.execute(
                f"CREATE VIEW {parquet} AS SELECT * FROM {empty} UNION ALL BY NAME "
                f"SELECT * FROM read_parquet({_sql_list(files)}, hive_partitioning=true, "
                "union_by_name=true)"
            )
        else:
            con.execute(f"CREATE VIEW {parquet} AS SELECT * FROM {empty}")
        rows = [
            row
            for seg_name, seg_rows in wal.get(spec.name, {}).items()
            if seg_name not in ingested
            for row in seg_rows
        ]
        wal_view = None
        if rows:
            wal_view = f"_{spec.name}_wal"
            con.register(wal_view, _dedupe(spec, rows))
        con.execute(f"CREATE VIEW {spec.name} AS {_view_sql(spec, parquet, wal_view)}")
    for setup in CONNECTION_SETUPS:
        setup(con, paths)
    for name, sql in DERIVED_VIEWS.items():
        con.execute(f"CREATE VIEW {name} AS {sql}")
    return con


def _empty(spec: TableSpec) -> pa.Table:
    return rows_to_table(spec, [], with_partition=True)


def _dedupe(spec: TableSpec, rows: list[Row]) -> pa.Table:
    """The WAL rows that fit the schema, first of each id. A row that does not fit is left out
    (ingest quarantines it as a dead letter): one bad row never makes `connect` fail."""
    good, _ = coerce_rows(spec, rows)
    return rows_to_table(spec, unique_by_id(spec, good).values(), with_partition=True, coerced=True)


def query(paths: LedgerPaths, sql: str) -> tuple[list[str], list[tuple]]:
    """Run one query; returns column names and rows."""
    con = connect(paths)
    try:
        cur = con.execute(sql)
        columns = [d[0] for d in cur.description] if cur.description else []
        return columns, cur.fetchall()
    finally:
        con.close()
