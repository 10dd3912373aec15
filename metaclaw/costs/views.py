"""The cost views: every LLM call with its tokens and USD (`call_costs`), summed per turn, role
and UTC day (`costs`).

Users' calls come from `turns` (their `usage` as the upstream reported it, OpenAI- or
Anthropic-shaped), the pipeline's from `model_calls`. Tokens and prices are read by the same
Python functions the rest of MetaClaw uses (`usage.normalise`, `pricing.cost_usd`), registered
as SQL functions on every connection, so a rule is written once; the price table is the
connection's (`LedgerPaths.prices`: `costs.prices` over the built-in list prices).
"""

from __future__ import annotations

from functools import partial

import duckdb
from duckdb.func import SPECIAL
from duckdb.sqltypes import BIGINT, BOOLEAN, DOUBLE, VARCHAR

from metaclaw.config import LedgerPaths
from metaclaw.costs.pricing import cost_usd
from metaclaw.costs.usage import normalise


def _input_tokens(usage: str | None) -> int | None:
    return normalise(usage).input_tokens


def _output_tokens(usage: str | None) -> int | None:
    return normalise(usage).output_tokens


def _usd(
    paths: LedgerPaths,
    model: str | None,
    input_tokens: int | None,
    output_tokens: int | None,
    local: bool | None,
) -> float | None:
    return cost_usd(model, input_tokens, output_tokens, paths.prices, local=bool(local))


def register_functions(con: duckdb.DuckDBPyConnection, paths: LedgerPaths) -> None:
    """The SQL functions the cost views call (a `metaclaw.ledger.views` connection setup).
    NULL arguments reach the functions: a NULL usage is unknown tokens, a NULL `local` is not
    local."""
    udf = partial(con.create_function, null_handling=SPECIAL, side_effects=False)
    udf("metaclaw_input_tokens", _input_tokens, [VARCHAR], BIGINT)
    udf("metaclaw_output_tokens", _output_tokens, [VARCHAR], BIGINT)
    udf("metaclaw_usd", partial(_usd, paths), [VARCHAR, BIGINT, BIGINT, BOOLEAN], DOUBLE)


CALL_COSTS_SQL = """
SELECT call_id, ts, role, model, turn_id, input_tokens, output_tokens, local,
       metaclaw_usd(model, input_tokens, output_tokens, local) AS usd
FROM (
    SELECT turn_id AS call_id, ts_start AS ts, 'user' AS role, model, turn_id,
           metaclaw_input_tokens(CAST(usage AS VARCHAR)) AS input_tokens,
           metaclaw_output_tokens(CAST(usage AS VARCHAR)) AS output_tokens,
           coalesce(served_by = 'policy', false) AS local
    FROM turns
    UNION ALL BY NAME
    SELECT call_id, ts, role, model, turn_id, input_tokens, output_tokens,
           coalesce(local, false) AS local
    FROM model_calls
)
"""

COSTS_SQL = """
SELECT turn_id, role, CAST(timezone('UTC', ts) AS DATE) AS day, count(*) AS calls,
       sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
       sum(usd) AS usd, count(*) FILTER (WHERE usd IS NULL) AS unpriced_calls
FROM call_costs
GROUP BY turn_id, role, day
"""

VIEWS = {"call_costs": CALL_COSTS_SQL, "costs": COSTS_SQL}
