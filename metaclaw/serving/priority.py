"""Priority classes of the local policy server: users first, the learning loop second.

Why: on embedded defaults one policy server serves the user's chat turns (through the proxy)
and the pipeline's own calls (judge votes, critic calls, the deploy gate's pairwise judge). A
flood of pipeline calls must not make a user wait. Every request is *interactive* unless it says
otherwise with `X-MetaClaw-Priority: background`; the pipeline's clients send that header (one
helper, `BACKGROUND_HEADERS`). The header can only lower a request's priority: there is no value
that ranks above the default, so nothing (a web page, a misbehaving agent) can push ahead of
users by sending it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

HEADER: Final = "X-MetaClaw-Priority"


class Priority(IntEnum):
    """Lower value = served first. INTERACTIVE is the default and the highest there is."""

    INTERACTIVE = 0
    BACKGROUND = 1


# What the pipeline's OpenAI clients send (`extra_headers=`/`default_headers=`).
BACKGROUND_HEADERS: Final[dict[str, str]] = {HEADER: Priority.BACKGROUND.name.lower()}

_VALUES = {p.name.lower(): p for p in Priority}


def parse_priority(value: str | None) -> Priority:
    """The class a request asked for: absent/empty → interactive. Raises ValueError (naming the
    accepted values) for anything else, so a typo is an error rather than a silent default."""
    if value is None or not value.strip():
        return Priority.INTERACTIVE
    try:
        return _VALUES[value.strip().lower()]
    except KeyError:
        accepted = " or ".join(sorted(_VALUES))
        raise ValueError(f"{HEADER} must be {accepted}, not {value[:40]!r}") from None
