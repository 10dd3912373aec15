"""MetaClaw: agents that improve themselves from their own conversations."""

from metaclaw.config import MetaClawConfig
from metaclaw.costs.views import VIEWS as COST_VIEWS
from metaclaw.costs.views import register_functions as cost_functions
from metaclaw.ledger.views import register_setup, register_views
from metaclaw.scoring.combine import VIEWS as SCORING_VIEWS

# the layers' readings of the ledger on every connection — scoring's (turn_feedback,
# turn_rewards, judge_agreement) and the costs' (call_costs, costs): the ledger itself does not
# import the layers above it
register_views(SCORING_VIEWS)
register_setup(cost_functions)
register_views(COST_VIEWS)

__all__ = ["MetaClawConfig"]
