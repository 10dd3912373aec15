"""The turn ledger: durable WAL appends, Parquet files under a manifest, DuckDB views."""

from metaclaw.ledger.ingest import IngestReport, ingest
from metaclaw.ledger.reader import connect, query
from metaclaw.ledger.schemas import TABLES, TableSpec
from metaclaw.ledger.wal import WalWriter, append_rows

__all__ = [
    "TABLES",
    "IngestReport",
    "TableSpec",
    "WalWriter",
    "append_rows",
    "connect",
    "ingest",
    "query",
]
