"""Constrained decoding: a request's `response_format` enforced token by token (llguidance).

Why: the judge and the critic must answer in JSON that their callers can read, and a 135M model
asked nicely almost never does (0 of 13 judge and critic prompts gave a usable answer
unconstrained in our measurement; see docs/policy-server.md). With a grammar-guided logits
processor every sampled token keeps the text a prefix of a document the schema accepts, and once
the document is complete only end-of-sequence may follow, so the reply is schema-valid unless
`max_tokens` cuts it short (`fit_to_budget` keeps the document within it).

Why llguidance (measured on SmolLM2-135M, CPU, against xgrammar, outlines-core and
lm-format-enforcer): one wheel with no dependencies, ~20 ms to compile a schema (a fresh schema
per request is cheap), ~1-3 ms of mask work per token against 30-250 ms per decode step. xgrammar
was as fast per token but pulls in triton and a TVM runtime; outlines-core needed ~10 s to index
the vocabulary for one schema.

Two halves, split by what they need:
- `Constraint` is model-free and hashable (it rides in the frozen `SamplingParams`): parsed and
  validated from the request body, so a bad schema is a 400 before any work is queued.
- `Guides` (one per engine) compiles the tokenizer for llguidance once, lazily (~1-2 s, only
  when the first constrained request arrives); `Guide` is one request's matcher state.

Logprobs: a constrained token is reported with its log-probability under the masked,
renormalised distribution it was actually drawn from (`sampling.py`'s rule). Such replies are
judge/critic output, not training data for the unconstrained policy.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where tensors are made: callers that only build a
    import torch  # response_format (the judge, the critic) stay light

# Compact JSON with the separators models saw most in training: no runaway whitespace.
JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
# Budgeting documents in characters: English text, repetitive text included, tokenises at 3-5
# characters a token in the BPE vocabularies we serve; 2 leaves a margin for digits and symbols.
CHARS_PER_TOKEN = 2


class ConstraintError(ValueError):
    """A response_format that cannot be enforced; the message says what to fix."""


@dataclass(frozen=True)
class Constraint:
    """What a reply must match: an llguidance grammar compiled from a JSON schema."""

    kind: str  # "json_schema" | "json_object" | "regex"
    grammar: str  # llguidance's serialized grammar (model-independent)
    name: str | None = None


def json_constraint(schema: dict[str, Any] | None, name: str | None = None) -> Constraint:
    """A constraint for replies that are JSON documents matching `schema` (None: any object).

    Raises ConstraintError naming the problem when llguidance cannot compile the schema
    (unsupported keyword, invalid schema), so the caller can answer 400.
    """
    from llguidance import LLMatcher

    try:
        grammar = LLMatcher.grammar_from_json_schema(schema or ANY_OBJECT, overrides=JSON_OPTIONS)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        raise ConstraintError(f"the JSON schema cannot be used: {exc}") from None
    problem = LLMatcher.validate_grammar(grammar)
    if problem:
        raise ConstraintError(f"the JSON schema cannot be enforced: {problem}")
    return Constraint("json_schema" if schema is not None else "json_object", grammar, name)


def regex_constraint(pattern: object) -> Constraint:
    """A constraint for replies that match `pattern` as a whole (llguidance's regex dialect).

    Why a regex and not only JSON: a user's rule about the shape of a reply ("under 15 words",
    "end with …", `scoring/hint_rules.py`) is a regex, and the hint teacher asks for replies
    that keep it (`training/hint_rollouts.py`)."""
    from llguidance import LLMatcher

    if not isinstance(pattern, str) or not pattern:
        raise ConstraintError("'response_format.regex' must be a non-empty string")
    try:
        grammar = LLMatcher.grammar_from_regex(pattern)
    except (ValueError, TypeError) as exc:
        raise ConstraintError(f"the regex cannot be used: {exc}") from None
    problem = LLMatcher.validate_grammar(grammar)
    if problem:
        raise ConstraintError(f"the regex cannot be enforced: {problem}")
    return Constraint("regex", grammar)


def parse_response_format(value: Any) -> Constraint | None:
    """OpenAI's `response_format` → a Constraint (None for `{"type": "text"}` or absent).

    Accepted: `{"type": "json_object"}`, `{"type": "json_schema", "json_schema": {"name":
    …, "schema": {…}, "strict"?: bool}}`, and MetaClaw's extension `{"type": "regex",
    "regex": "…"}`. Errors name the field to fix.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ConstraintError(
            '\'response_format\' must be an object such as {"type": "json_object"}'
        )
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return json_constraint(None)
    if kind == "regex":
        return regex_constraint(value.get("regex"))
    if kind != "json_schema":
        raise ConstraintError(
            "'response_format.type' must be 'text', 'json_object', 'json_schema' or 'regex', "
            f"got {kind!r}"
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise ConstraintError(
            "'response_format.json_schema' must be an object with 'name' and 'schema'"
        )
    name = spec.get("name")
    if name is not None and not isinstance(name, str):
        raise ConstraintError("'response_format.json_schema.name' must be a string")
    schema = spec.get("schema", ANY_OBJECT)
    if not isinstance(schema, dict):
        raise ConstraintError("'response_format.json_schema.schema' must be a JSON schema object")
    return json_constraint(schema, name)


def response_format(
    schema: dict[str, Any], name: str, max_tokens: int | None = None
) -> dict[str, Any]:
    """The `response_format` body that asks an OpenAI-compatible server for `schema`.

    Objects that do not say otherwise get `additionalProperties: false`: an open object lets a
    small model invent keys until `max_tokens` runs out. Not `strict`: OpenAI's strict mode
    rejects keywords our schemas use (maxLength, defaults); the local policy server enforces
    every keyword llguidance supports either way. With `max_tokens` (the request's), string
    and array limits are lowered so the longest valid document has at most
    `CHARS_PER_TOKEN · max_tokens` characters (`fit_to_budget`): a model that loops inside a
    string is then made to close it before the token limit cuts the document.
    """
    closed = _closed(schema)
    if max_tokens is not None:
        closed = fit_to_budget(closed, CHARS_PER_TOKEN * max_tokens)
    return {"type": "json_schema", "json_schema": {"name": name, "schema": closed}}


def fit_to_budget(schema: dict[str, Any], max_chars: int) -> dict[str, Any]:
    """`schema` with string `maxLength` and array `maxItems` lowered (never raised) until the
    longest JSON document it allows has at most `max_chars` characters.

    Why: a small model under a grammar can still loop inside a free string until `max_tokens`
    cuts the document, which is then invalid; a document short enough in characters fits in
    the token limit (see `CHARS_PER_TOKEN`; text in scripts that take several tokens a
    character needs a smaller budget). One cap applies to every string (short fields keep
    their own limit, long ones share what is left) and one to every array, the largest string
    cap that fits winning; a schema that cannot fit even at the smallest caps is returned at
    those caps. Strings with no maxLength are taken as ids or names (at most 64 characters).
    """
    fitted = schema
    for chars in _CHAR_CAPS:  # the longest strings first; then fewer array items
        for items in (8, 4, 2, 1):
            fitted = _capped(schema, chars, items)
            if _longest(fitted, fitted, 0) <= max_chars:
                return fitted
    return fitted


_CHAR_CAPS = (4000, 3000, 2000, 1500, 1000, 750, 500, 350, 250, 180, 120, 80, 50, 30, 16)
_ID_CHARS = 64  # a string without maxLength in our schemas is an id, a name or a category


def _capped(node: Any, chars: int, items: int) -> Any:
    if isinstance(node, list):
        return [_capped(item, chars, items) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _capped(value, chars, items) for key, value in node.items()}
    if out.get("type") == "string" and "enum" not in out and "const" not in out:
        limit = min(out.get("maxLength", _ID_CHARS), chars)
        out["maxLength"] = max(limit, out.get("minLength", 0))
    if out.get("type") == "array":
        out["maxItems"] = max(min(out.get("maxItems", items), items), out.get("minItems", 0))
    return out


_UNBOUNDED = 10**9


def _longest(node: Any, root: dict[str, Any], depth: int) -> int:
    """Characters of the longest compact document `node` allows (ASCII; `_UNBOUNDED` if none)."""
    if not isinstance(node, dict) or depth > 32:
        return _UNBOUNDED
    if "$ref" in node:
        target: Any = root
        for part in str(node["$ref"]).removeprefix("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        return _longest(target, root, depth + 1)
    for key in ("anyOf", "oneOf"):
        if key in node:
            return max(_longest(n, root, depth + 1) for n in node[key])
    if "enum" in node or "const" in node:
        values = node.get("enum", [node.get("const")])
        return max(len(json.dumps(v)) for v in values)
    kind = node.get("type")
    if kind == "string":
        return node.get("maxLength", _UNBOUNDED) + 2
    if kind in ("integer", "number"):
        return 24
    if kind in ("boolean", "null"):
        return 5
    if kind == "array":
        n = node.get("maxItems", _UNBOUNDED)
        return 2 + n * (_longest(node.get("items", {}), root, depth + 1) + 2)
    if kind == "object":
        props = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        if extra is not False:
            return _UNBOUNDED
        return 2 + sum(
            len(json.dumps(k)) + 4 + _longest(v, root, depth + 1) for k, v in props.items()
        )
    return _UNBOUNDED


def _closed(node: Any) -> Any:
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _closed(value) for key, value in node.items()}
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    return out


class Guides:
    """Starts guides for one engine's tokenizer; the llguidance tokenizer is built once."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int,
        eos_ids: Iterable[int],
        tokenizer_lock: threading.Lock | None = None,
    ) -> None:
        self._hf = tokenizer
        self.vocab_size = vocab_size
        self.eos_ids = sorted(eos_ids)
        self._tok_lock = tokenizer_lock or threading.Lock()
        self._ll: Any = None

    def _tokenizer(self) -> Any:
        if self._ll is None:
            import llguidance.hf

            with self._tok_lock:  # the HF tokenizer is shared with the event loop's encode
                self._ll = llguidance.hf.from_tokenizer(
                    self._hf, n_vocab=self.vocab_size, eos_token=self.eos_ids or None
                )
        return self._ll

    def start(self, constraint: Constraint | None) -> Guide | None:
        if constraint is None:
            return None
        from llguidance import LLMatcher

        matcher = LLMatcher(self._tokenizer(), constraint.grammar, log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"constrained decoding could not start: {matcher.get_error()}")
        return Guide(matcher, self.vocab_size)


class Guide:
    """One request's position in its grammar: masks the logits, then consumes the token."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size

    def allowed(self) -> torch.Tensor:
        """Bool [V]: the tokens that keep the reply valid (EOS once the document is done)."""
        import torch

        words = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        bits = np.unpackbits(words, bitorder="little")[: self.vocab_size]
        if self.matcher.is_error() or not bits.any():
            raise ConstraintError(
                "constrained decoding reached a dead end: "
                f"{self.matcher.get_error() or 'no token is allowed'}"
            )
        return torch.from_numpy(bits.astype(np.bool_))

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` [V] with every token the grammar forbids at -inf (a new tensor)."""
        allowed = self.allowed()
        if logits.shape[-1] > allowed.shape[0]:  # model rows beyond the tokenizer: never valid
            allowed = torch.cat([allowed, allowed.new_zeros(logits.shape[-1] - allowed.shape[0])])
        return logits.masked_fill(~allowed[: logits.shape[-1]], float("-inf"))

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise ConstraintError(
                f"token {token} does not fit the response format: {self.matcher.get_error()}"
            )
