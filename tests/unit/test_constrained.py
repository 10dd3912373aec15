"""Constrained decoding on the tiny random model: whatever the model would say, a request with a
`response_format` gets a document its schema accepts, and the reported logprobs are those of the
masked distribution the token was drawn from."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from metaclaw.serving.constrained import (
    ConstraintError,
    json_constraint,
    parse_response_format,
    response_format,
)
from metaclaw.serving.engine import EngineError, PolicyEngine
from metaclaw.serving.openai_params import parse_chat
from metaclaw.serving.sampling import SamplingParams, sampling_logprobs
from tests.serving_helpers import Reference, generate, tiny_model_dir

torch.set_num_threads(1)

VERDICT = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "enum": [-1, 0, 1]},
        "reason": {"type": "string", "maxLength": 12},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}, "maxItems": 2},
    },
    "required": ["score", "reason", "tags"],
    "additionalProperties": False,
}
SEEDS = range(6)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[PolicyEngine]:
    eng = PolicyEngine(model_dir, name="tiny", max_batch=8, max_queue=16).start()
    yield eng
    eng.close()


def _prompt(engine: PolicyEngine) -> list[int]:
    rendered = engine.render_chat([{"role": "user", "content": "Judge this reply."}], None)
    return engine.encode(rendered, add_special_tokens=False)


def _chat_params(response_format: dict[str, Any] | None, **extra: Any) -> SamplingParams:
    body: dict[str, Any] = {
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 200,
        **extra,
    }
    if response_format is not None:
        body["response_format"] = response_format
    return parse_chat(body, 512).params


def _many(engine: PolicyEngine, params: list[SamplingParams]) -> list[Any]:
    ids = _prompt(engine)

    async def run() -> list[Any]:
        return await asyncio.gather(*(generate(engine, ids, **vars(p)) for p in params))

    return asyncio.run(run())


def test_every_constrained_reply_matches_its_schema(engine: PolicyEngine) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}}
    free = _many(engine, [_chat_params(None, temperature=1.0, seed=s) for s in SEEDS])
    assert not any(_parses(r.text) for r in free)  # the random model never writes JSON itself
    guided = _many(engine, [_chat_params(fmt, temperature=1.0, seed=s) for s in SEEDS])
    for result in guided:
        assert result.finish_reason == "stop", result.text
        jsonschema.validate(json.loads(result.text), VERDICT)
        assert result.completion_ids[-1] in engine.eos_ids  # nothing may follow the document
    assert len({r.text for r in guided}) > 1  # sampling still chooses among valid documents


def test_json_object_mode_gives_an_object(engine: PolicyEngine) -> None:
    params = _chat_params({"type": "json_object"}, temperature=0.0, max_tokens=120)
    (result,) = _many(engine, [params])
    assert result.text.startswith("{")
    if result.finish_reason == "stop":  # an open-ended object may also run out of tokens
        assert isinstance(json.loads(result.text), dict)


def test_logprobs_are_those_of_the_masked_distribution(
    engine: PolicyEngine, model_dir: Path
) -> None:
    """Replaying the reply through the same grammar: each token's reported logprob is the
    renormalised probability among the tokens the grammar allowed at that point."""
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": VERDICT}}
    params = _chat_params(fmt, temperature=1.0, seed=11)
    (result,) = _many(engine, [params])
    ids = result.prompt_ids
    guide = engine._guides.start(params.constraint)
    assert guide is not None
    ref = Reference(model_dir)
    with torch.inference_mode():
        logits = ref.model(input_ids=torch.tensor([ids + result.completion_ids])).logits[0]
    for k, token in enumerate(result.completion_ids):
        masked = guide.mask(logits[len(ids) - 1 + k].float())
        expected = float(sampling_logprobs(masked, 1.0, 1.0)[token])
        assert result.completion_logprobs[k] == pytest.approx(expected, abs=1e-4)
        guide.advance(token)
    unmasked = Reference(model_dir).logprobs(ids, result.completion_ids)
    assert sum(result.completion_logprobs) > sum(unmasked)  # the mask moved mass onto them


@pytest.mark.parametrize(
    ("fmt", "needle"),
    [
        ("json", "must be an object"),
        ({"type": "yaml"}, "'response_format.type'"),
        ({"type": "json_schema"}, "'response_format.json_schema'"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": []}}, "schema"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}},
            "cannot",
        ),
    ],
)
def test_bad_response_formats_are_a_400_naming_the_field(fmt: Any, needle: str) -> None:
    with pytest.raises(EngineError) as err:
        parse_chat({"messages": [{"role": "user", "content": "x"}], "response_format": fmt}, 64)
    assert err.value.status == 400 and err.value.param == "response_format"
    assert needle in err.value.message


def test_text_format_means_no_constraint() -> None:
    assert parse_response_format({"type": "text"}) is None
    assert parse_response_format(None) is None
    with pytest.raises(ConstraintError):
        json_constraint({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}})


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_response_format_closes_objects_so_a_small_model_cannot_invent_keys() -> None:
    from metaclaw.skills.diagnosis import DiagnosisAnswer

    fmt = response_format(DiagnosisAnswer.model_json_schema(), "DiagnosisAnswer")
    schema = fmt["json_schema"]["schema"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "DiagnosisAnswer"
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["Evidence"]["additionalProperties"] is False
    assert parse_response_format(fmt) is not None  # llguidance compiles it ($ref, enum, limits)
    open_map = {"type": "object", "additionalProperties": {"type": "string"}}
    assert response_format(open_map, "m")["json_schema"]["schema"] == open_map  # left as said


NOTES = {
    "type": "object",
    "properties": {
        "note": {"type": "string", "maxLength": 5000},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["note", "tags"],
}


def test_a_token_budget_makes_even_a_looping_model_close_its_document(engine: PolicyEngine) -> None:
    """The random model never ends a free string by itself: unbudgeted, the document is cut at
    max_tokens; fitted to a budget of 40 tokens (80 characters), every reply is complete."""
    loose = _chat_params(response_format(NOTES, "notes"), temperature=1.0, seed=0, max_tokens=60)
    (cut,) = _many(engine, [loose])
    assert cut.finish_reason == "length" and not _parses(cut.text)
    fitted = response_format(NOTES, "notes", max_tokens=40)
    schema = fitted["json_schema"]["schema"]
    assert schema["properties"]["note"]["maxLength"] < 80
    replies = _many(
        engine, [_chat_params(fitted, temperature=1.0, seed=s, max_tokens=400) for s in SEEDS]
    )
    for result in replies:
        assert result.finish_reason == "stop", result.text
        jsonschema.validate(json.loads(result.text), schema)
        assert len(result.text) <= 80
