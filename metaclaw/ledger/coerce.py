"""Coercing row values to a table's schema (pure).

Why: one value of the wrong type (an upstream that returns `message.content` as a list of parts
puts a list where the schema has a string) used to make the Arrow conversion of the whole batch
raise, so ingest failed on every run and every reader failed with it. Values are coerced when a
row is appended (so the WAL holds schema-shaped rows) and again when rows are read or ingested
(rows written by older versions). A value that cannot be coerced makes only its own row fail,
with a `RowError` naming the column; ingest quarantines such rows (metaclaw/ledger/deadletter.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa

from metaclaw.ledger.schemas import TableSpec

Row = dict[str, Any]
Coercer = Callable[[Any], Any]
_OPTS = orjson.OPT_PASSTHROUGH_DATETIME
_INT_RANGE = {32: (-(2**31), 2**31 - 1), 64: (-(2**63), 2**63 - 1)}


class RowError(ValueError):
    """A row that cannot be stored in its table, and why (the column named)."""


def to_micros(value: datetime) -> int:
    """Epoch microseconds (UTC); naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1_000_000)


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return to_micros(value)
    raise TypeError(f"cannot store {type(value).__name__} in the ledger")


def _dumps(value: Any) -> str:
    return orjson.dumps(value, default=json_default, option=_OPTS).decode()


def _text(value: Any) -> str:
    """A string column: text parts (`[{"type": "text", "text": ...}, ...]`) are joined, any
    other structure is kept as its JSON text."""
    if isinstance(value, str):
        return value
    if (
        isinstance(value, list)
        and value
        and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value)
    ):
        return "".join(p["text"] for p in value)
    return _dumps(value)


def _json_text(value: Any) -> str:
    """A JSON column holds JSON text: documents are encoded; a string that is not JSON already
    becomes a JSON string (the views cast these columns to JSON, which must never fail)."""
    if isinstance(value, str):
        try:
            orjson.loads(value)
        except orjson.JSONDecodeError:
            return _dumps(value)
        return value
    return _dumps(value)


def _integer(bits: int) -> Coercer:
    low, high = _INT_RANGE[bits]

    def coerce(value: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str):
            value = int(value.strip())
        if not isinstance(value, int):
            raise TypeError(f"expected an integer, got {type(value).__name__}")
        if not low <= value <= high:
            raise ValueError(f"{value} does not fit in {bits} bits")
        return int(value)

    return coerce


def _floating(value: Any) -> float:
    if isinstance(value, str):
        return float(value.strip())
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise TypeError(f"expected true or false, got {value!r}"[:200])


def _timestamp(value: Any) -> int:
    if isinstance(value, datetime):
        return to_micros(value)
    if isinstance(value, str):
        return to_micros(datetime.fromisoformat(value.strip()))
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"expected epoch microseconds or an ISO time, got {type(value).__name__}")


def _listing(scalar: type | tuple[type, ...]) -> Coercer:
    """Lists are only shape-checked here: their elements (token ids can be thousands) are
    checked by Arrow in one C pass (`coerce_rows`), not one Python call each."""

    def coerce(value: Any) -> list[Any]:
        if isinstance(value, scalar) and not isinstance(value, bool):
            return [value]  # one value where a list is expected
        if isinstance(value, tuple):
            return list(value)
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return value

    return coerce


def _coercer(kind: pa.DataType, json_column: bool) -> Coercer:
    if json_column:
        return _json_text
    if pa.types.is_string(kind):
        return _text
    if pa.types.is_integer(kind):
        return _integer(kind.bit_width)
    if pa.types.is_floating(kind):
        return _floating
    if pa.types.is_boolean(kind):
        return _boolean
    if pa.types.is_timestamp(kind):
        return _timestamp
    if pa.types.is_list(kind):
        return _listing(str if pa.types.is_string(kind.value_type) else (int, float))
    raise TypeError(f"no coercion for Arrow type {kind}")


_Plan = tuple[dict[str, tuple[Coercer, tuple[type, ...]]], tuple[str, ...]]
_PLANS: dict[int, tuple[TableSpec, _Plan]] = {}


def _plan(spec: TableSpec) -> _Plan:
    """Per column: its coercer and the Python types that need no coercion (the fast path);
    computed once per spec (hashing a schema on every row would cost more than coercing)."""
    cached = _PLANS.get(id(spec))
    if cached is not None and cached[0] is spec:
        return cached[1]
    plan: dict[str, tuple[Coercer, tuple[type, ...]]] = {}
    for field in spec.schema:
        json_column = field.name in spec.json_columns
        coercer = _coercer(field.type, json_column)
        exact: tuple[type, ...] = ()  # ints (range), timestamps: always checked
        if json_column:
            exact = (dict, list)  # kept nested; encoded as text when stored
        elif pa.types.is_string(field.type):
            exact = (str,)
        elif pa.types.is_floating(field.type):
            exact = (float,)
        elif pa.types.is_boolean(field.type):
            exact = (bool,)
        elif pa.types.is_list(field.type):
            exact = (list,)  # elements: checked by Arrow in coerce_rows
        plan[field.name] = (coercer, exact)
    required = tuple(f.name for f in spec.schema if not f.nullable)
    _PLANS[id(spec)] = (spec, (plan, required))
    return plan, required


def coerce_row(spec: TableSpec, row: Row) -> Row:
    """`row` with every schema column's value of the schema's type (JSON columns may stay
    nested); keys outside the schema are kept as they are. Raises `RowError`."""
    plan, required = _plan(spec)
    out: Row = {}
    for name, value in row.items():
        step = plan.get(name)
        if step is None or value is None or type(value) in step[1]:
            out[name] = value
            continue
        try:
            out[name] = step[0](value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise RowError(f"column {name!r} of {spec.name}: {exc}") from None
    for name in required:
        if out.get(name) is None:
            raise RowError(f"column {name!r} of {spec.name} is required but missing")
    return out


def stored_value(spec: TableSpec, name: str, value: Any) -> Any:
    """The value as the Arrow column holds it: JSON columns as text."""
    if value is not None and name in spec.json_columns and not isinstance(value, str):
        return _dumps(value)
    return value


def coerce_rows(spec: TableSpec, rows: Iterable[Row]) -> tuple[list[Row], list[tuple[Row, str]]]:
    """The rows that fit the schema (coerced), and the ones that do not with the reason."""
    good: list[Row] = []
    bad: list[tuple[Row, str]] = []
    for row in rows:
        try:
            good.append(coerce_row(spec, row))
        except RowError as exc:
            bad.append((row, str(exc)))
    for field in spec.schema:
        if pa.types.is_list(field.type) and good:
            good, failed = _check_elements(spec.name, field, good)
            bad.extend(failed)
    return good, bad


def _check_elements(
    table: str, field: pa.Field, rows: list[Row]
) -> tuple[list[Row], list[tuple[Row, str]]]:
    """Arrow converts a list column of the whole batch at once; only when that fails is each
    row converted alone, to find the ones at fault."""
    try:
        pa.array([row.get(field.name) for row in rows], field.type)
        return rows, []
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    good, bad = [], []
    for row in rows:
        try:
            pa.array([row.get(field.name)], field.type)
            good.append(row)
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            bad.append((row, f"column {field.name!r} of {table}: {exc}"[:500]))
    return good, bad
