"""Cleaning a user message is linear: no input makes the proxy's retrieval query slow.

The former lazy `.*?` patterns took quadratic time on unclosed tags (132 KiB → 4.5 s); these
payloads are 1 MiB each and must be cleaned in well under the 50 ms budget.
"""

from __future__ import annotations

import time

import pytest

from metaclaw.skills.query import clean_user_text, extract_query

MIB = 1 << 20
UNCLOSED = {
    "system-reminder": "<system-reminder>x",
    "internal-context": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>> y ",
    "metadata-fence": "Sender (untrusted metadata):\n```json\n",
    "metadata-object": "Sender (untrusted metadata):\n{",
    "blank-lines": "\n",
    "timestamp-like": "[2026-01-01 10:00",
    "runtime-lines": "Runtime: a\n",
}


def _mib(unit: str) -> str:
    return (unit * (MIB // len(unit) + 1))[:MIB]


def _best_of(fn: object, arg: object, runs: int = 3) -> float:
    """Best of a few runs: the 2-core CI box is shared, a single sample measures the others."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn(arg)  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best


@pytest.mark.parametrize("kind", ["system-reminder", "internal-context", "blank-lines"])
def test_a_mebibyte_of_unclosed_tags_is_cleaned_in_under_50_ms(kind: str) -> None:
    payload = _mib(UNCLOSED[kind])
    assert _best_of(clean_user_text, payload) < 0.05


@pytest.mark.parametrize("kind", sorted(UNCLOSED))
def test_the_query_of_a_mebibyte_message_takes_under_50_ms(kind: str) -> None:
    messages = [{"role": "user", "content": "fix my flaky test\n" + _mib(UNCLOSED[kind])}]
    assert _best_of(extract_query, messages) < 0.05
    assert extract_query(messages).startswith("fix my flaky test")


def test_cleaning_keeps_its_meaning() -> None:
    """The linear scanner removes exactly what the patterns described."""
    text = (
        "[Wed 2026-11-25 21:17 UTC] hello\n\n\n\n  Runtime: agent=main\nsee "
        "<system-reminder>r</system-reminder>this<system-reminder>open\n"
        'Sender (untrusted metadata):\n```json\n{"a": 1}\n```\nlast'
        "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>ctx"
    )
    assert clean_user_text(text) == "hello\nsee this<system-reminder>open\nlast"
    assert clean_user_text('a (untrusted metadata):\n{\n "x": 1\n}\nq') == "q"
    long_label = "x" * 81 + " (untrusted metadata):\n{\n}\nq"
    assert clean_user_text(long_label) == long_label  # labels are at most 80 characters
    assert clean_user_text("say [2026-01-01 10:00] twice") == "say [2026-01-01 10:00] twice"
