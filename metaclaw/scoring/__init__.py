"""Scoring: one trusted reward per turn, with its provenance (docs/scoring.md).

Three kinds of signal land in the `rewards` table (explicit feedback stays in `feedback`), and
the view `turn_rewards` combines them by one documented rule:

- `judge`: an LLM judge votes m times on each assistant turn *with what happened next* (the
  user's next message or the tool results), so corrections count (`judge.py`, `prompt.py`,
  `votes.py`, `transcript.py`);
- `implicit:<kind>`: pure detectors over the conversation — correction, re-ask, continuation,
  abandonment, tool/upstream errors, session length (`implicit.py`);
- `explicit`: what users post to `POST /v1/feedback` (`feedback.py`), tied to a turn even when the
  client only knows its session (`combine.py`, view `turn_feedback`).

This package's `__init__` imports nothing: the package root registers `combine.VIEWS` with the
ledger (`metaclaw.ledger.views.register_views`) on every import of MetaClaw, and that must stay
cheap.
"""
