"""docs/architecture.md shows the table schemas exactly as the code defines them."""

from __future__ import annotations

import re
from pathlib import Path

from metaclaw.ledger.schemas import render_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
BLOCK = re.compile(r"<!-- schemas:begin -->\n(.*)<!-- schemas:end -->", re.S)


def test_schemas_documented() -> None:
    match = BLOCK.search(DOC.read_text())
    assert match, "docs/architecture.md lacks the schemas block"
    assert match.group(1).strip() == render_markdown().strip(), (
        "docs/architecture.md is stale: run `python -m metaclaw.ledger.schemas` to regenerate it"
    )
