"""Costs: what each LLM call cost, in tokens and USD, and the pipeline's daily budget.

Users' calls are the `turns` the proxy captured; the pipeline's own calls about those turns
(judge votes, critic diagnoses and proposals) are `model_calls` rows. The view `costs`
(`views.py`) prices both with the price table in force (`pricing.py`, `costs.prices` over the
built-in list prices), and `budget.py` decides how far the pipeline may still spend today.
"""
