"""Faults in one request stay in that request (issue 16, item 8): a group emptied by a cancel or
a deadline is dropped once, and a step that fails only fails the rows that made it fail.

Tiny random model, in-process engine, real forward passes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from metaclaw.serving.engine import Delta, EngineError, PolicyEngine, Request, Result
from metaclaw.serving.sampling import SamplingParams
from tests.serving_helpers import collect, tiny_model_dir

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def engine(model_dir: Path) -> Iterator[PolicyEngine]:
    eng = PolicyEngine(model_dir, name="tiny", max_batch=8, max_queue=256).start()
    yield eng
    eng.close()


def _ids(engine: PolicyEngine, text: str) -> list[int]:
    rendered = engine.render_chat([{"role": "user", "content": text}], None)
    return engine.encode(rendered, add_special_tokens=False)


def _params(max_tokens: int, **extra: object) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, **extra)


def test_a_group_emptied_when_its_step_starts_is_dropped_once(model_dir: Path) -> None:
    """The worker's round, run by hand so the cancel lands exactly in the gap: after group B's
    last step, before its next one. The old `_step` pruned B away, stepped it anyway and pruned
    it again (ValueError: list.remove), which `_run` turned into a 500 for every request."""
    engine = PolicyEngine(model_dir, name="tiny")  # not started: this test is the worker

    async def scenario() -> tuple[Result, list[object]]:
        loop = asyncio.get_running_loop()
        ids = _ids(engine, "two groups")
        a = Request(ids, _params(6), stream=False, deadline=time.monotonic() + 60, loop=loop)
        b = Request(ids, _params(6), stream=True, deadline=time.monotonic() + 60, loop=loop)
        with torch.inference_mode():
            engine._prefill([a])
            engine._prefill([b])
        b.cancel()  # the client of B hangs up between rounds
        with torch.inference_mode():  # as on the worker
            while engine._groups:
                for group in list(engine._groups):
                    engine._step(group)
        result = await asyncio.wait_for(a.events.get(), 5)
        await asyncio.sleep(0)  # let any late delivery to B land
        sent_to_b = []
        while not b.events.empty():
            sent_to_b.append(b.events.get_nowait())
        return result, sent_to_b

    result, sent_to_b = asyncio.run(scenario())
    assert isinstance(result, Result) and len(result.completion_ids) == 6
    assert len(sent_to_b) == 1 and isinstance(sent_to_b[0], Delta), "B got tokens after cancel"
    assert engine.stats.cancelled == 1 and engine.stats.failed == 0


def test_a_request_whose_sampling_fails_fails_alone(engine: PolicyEngine) -> None:
    """A NaN temperature makes sampling raise for that request only; its batch-mates (admitted
    in the same prefill) and a later stream finish."""
    ids = _ids(engine, "bad apple")

    async def scenario() -> tuple[list[Result], BaseException]:
        good = [engine.submit(ids, _params(n), stream=False, timeout_s=60) for n in (1, 16, 40)]
        nan = SamplingParams(max_tokens=16, temperature=float("nan"))
        bad = engine.submit(ids, nan, stream=False, timeout_s=60)
        later = engine.submit(ids, _params(16), stream=True, timeout_s=60)
        outcomes = await asyncio.gather(
            *(collect(r) for r in [*good, later, bad]), return_exceptions=True
        )
        return [o for o in outcomes[:-1] if isinstance(o, Result)], outcomes[-1]

    finished, failure = asyncio.run(scenario())
    assert [len(r.completion_ids) for r in finished] == [1, 16, 40, 16]
    assert isinstance(failure, EngineError) and failure.status == 500
    assert engine.stats.failed == 1 and engine.active == 0


@pytest.mark.slow
def test_mixed_load_with_cancels_and_deadlines_never_fails_a_bystander(
    engine: PolicyEngine,
) -> None:
    """Chat-like and judge-like requests together (max_tokens 1, 16, 256), each admitted as its
    own group; of the long ones, a third are cancelled mid-generation and a third given a
    deadline they cannot meet. Every other request finishes with exactly its tokens, the
    deadlines are 504s, and nothing is a 500."""
    rng = random.Random(16)
    ids = _ids(engine, "mixed load")
    roles = [
        "plain" if i % 3 != 2 else ("plain", "cancel", "deadline")[i // 3 % 3] for i in range(24)
    ]

    async def finish(req: Request, role: str) -> object:
        if role == "cancel":
            await asyncio.sleep(rng.uniform(0.01, 0.3))
            req.cancel()
            return None
        try:
            return await collect(req)
        except EngineError as err:
            return err

    async def scenario() -> list[object]:
        pending = []
        for i, role in enumerate(roles):
            timeout = rng.uniform(0.1, 0.4) if role == "deadline" else 60
            req = engine.submit(ids, _params((1, 16, 256)[i % 3]), stream=True, timeout_s=timeout)
            first = await asyncio.wait_for(req.events.get(), 30)  # admitted: a group of its own
            if isinstance(first, Result | EngineError):
                req.events.put_nowait(first)
            pending.append(asyncio.create_task(finish(req, role)))
        return await asyncio.gather(*pending)

    outcomes = asyncio.run(scenario())
    for i, (role, outcome) in enumerate(zip(roles, outcomes, strict=True)):
        if role == "plain":
            assert isinstance(outcome, Result), (i, outcome)
            assert len(outcome.completion_ids) == (1, 16, 256)[i % 3]
        elif role == "deadline":
            assert isinstance(outcome, EngineError) and outcome.status == 504, (i, outcome)
    time.sleep(0.3)  # cancelled rows are dropped at the next round
    assert engine.active == 0 and engine.stats.failed == roles.count("deadline")
    assert engine.stats.cancelled == roles.count("cancel")
