"""Generated doc blocks match the code: the table schemas (docs/architecture.md) and the
implicit detector registry (docs/scoring.md)."""

from __future__ import annotations

import re
from pathlib import Path

from metaclaw.ledger.schemas import render_markdown
from metaclaw.scoring import implicit

DOC = Path(__file__).resolve().parents[2] / "docs" / "architecture.md"
BLOCK = re.compile(r"<!-- schemas:begin -->\n(.*)<!-- schemas:end -->", re.S)


def test_schemas_documented() -> None:
    match = BLOCK.search(DOC.read_text())
    assert match, "docs/architecture.md lacks the schemas block"
    assert match.group(1).strip() == render_markdown().strip(), (
        "docs/architecture.md is stale: run `python -m metaclaw.ledger.schemas` to regenerate it"
    )


def test_implicit_detectors_documented() -> None:
    doc = DOC.with_name("scoring.md").read_text()
    match = re.search(r"<!-- implicit:begin -->\n(.*)<!-- implicit:end -->", doc, re.S)
    assert match, "docs/scoring.md lacks the implicit block"
    assert match.group(1) == implicit.render_markdown(), (
        "docs/scoring.md is stale: replace its implicit block with the output of "
        "`python -c 'from metaclaw.scoring.implicit import render_markdown as r; print(r())'`"
    )
