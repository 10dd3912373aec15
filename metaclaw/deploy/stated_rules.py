"""The rule users keep stating, read from the ledger for the deploy gate: the I/O half of
`scoring.hint_rules.standing_rule`.

Why the gate reads it: when users keep saying "always end with 'Cheers!'" or "at most five
words", whether a reply keeps that is a fact, not an opinion, and a small judge (the embedded
135M model) cannot see it reliably. Such a rule decides a pair when exactly one reply keeps it;
every other pair goes to the judge (`pairwise.PairwiseJudge`). The rule comes from users' own
words (corrections and feedback comments, `scoring.hints`), never from the judge the policy was
trained against, and the gate's guards (KL from the base, length, degenerate replies) still
veto a candidate that bought compliance with drift.
"""

from __future__ import annotations

from metaclaw.config import Settings
from metaclaw.ledger import connect
from metaclaw.scoring.hint_rules import HintRule, standing_rule
from metaclaw.scoring.hint_store import load_hints


def users_rule(settings: Settings) -> HintRule | None:
    """The standing rule in the newest `deploy.stated_rule_turns` turns' hints, or None (also
    when `deploy.stated_rules` is off)."""
    cfg = settings.deploy
    if not cfg.stated_rules:
        return None
    con = connect(settings.paths)
    try:
        newest = [
            row[0]
            for row in con.execute(
                "SELECT turn_id FROM turns ORDER BY ts_start DESC, turn_id LIMIT ?",
                [cfg.stated_rule_turns],
            ).fetchall()
        ]
        hints = load_hints(con, newest)
    finally:
        con.close()
    stated = ((turn_id, h.text) for turn_id, found in hints.items() for h in found)
    return standing_rule(stated, cfg.stated_rule_support)
