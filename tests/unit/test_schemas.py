"""`COLUMN_NOTES` is the one place a ledger column is explained (the docs block comes from it)."""

from __future__ import annotations

import io
import tokenize
from pathlib import Path

from metaclaw.ledger import schemas
from metaclaw.ledger.schemas import COLUMN_NOTES, TABLES


def test_every_note_names_an_existing_column() -> None:
    stray = [
        f"{table}.{column}"
        for table, column in COLUMN_NOTES
        if table not in TABLES or column not in TABLES[table].schema.names
    ]
    assert stray == [], f"notes for columns that do not exist: {stray}"


def test_columns_carry_no_second_note_beside_them() -> None:
    """A comment on a column's line is a second note, which drifts from `COLUMN_NOTES`."""
    source = Path(schemas.__file__).read_text()
    commented = [
        tok.line.strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT and tok.line.lstrip().startswith('("')
    ]
    assert commented == [], "move these notes into COLUMN_NOTES:\n" + "\n".join(commented)
