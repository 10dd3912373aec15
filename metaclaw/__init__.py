"""MetaClaw: agents that improve themselves from their own conversations."""

from metaclaw.config import MetaClawConfig
from metaclaw.ledger.views import register_views
from metaclaw.scoring.combine import VIEWS as SCORING_VIEWS

# scoring's reading of the ledger (turn_feedback, turn_rewards, judge_agreement) on every
# connection: the ledger itself does not import the layers above it
register_views(SCORING_VIEWS)

__all__ = ["MetaClawConfig"]
