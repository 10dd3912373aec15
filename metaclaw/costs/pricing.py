"""USD of one call from its model and token counts (pure).

Why unknown rather than 0: a model missing from the price table may well be expensive, and a
total that silently counts it as free would let a budget be overspent; the cost is None and the
reports count such calls apart. Calls to our own policy server cost 0 whatever its model.
"""

from __future__ import annotations

from collections.abc import Mapping

from metaclaw.config import ModelPrice

PER_TOKENS = 1_000_000  # prices are per million tokens


def price_for(model: str | None, prices: Mapping[str, ModelPrice]) -> ModelPrice | None:
    """The model's price: its exact entry, else the longest entry its name starts with."""
    if not model:
        return None
    exact = prices.get(model)
    if exact is not None:
        return exact
    matches = [name for name in prices if model.startswith(name)]
    return prices[max(matches, key=len)] if matches else None


def cost_usd(
    model: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    prices: Mapping[str, ModelPrice],
    *,
    local: bool = False,
) -> float | None:
    """What the call cost in USD; None when its model has no price or its tokens are unknown."""
    if local:
        return 0.0
    price = price_for(model, prices)
    if price is None or input_tokens is None or output_tokens is None:
        return None
    return (input_tokens * price.input + output_tokens * price.output) / PER_TOKENS
