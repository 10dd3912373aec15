"""The policy engine on a tiny random model, in-process: the numbers it reports are the model's,
batching and hot swaps do not change them, and its limits hold."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from metaclaw.serving.engine import AdapterError, Delta, EngineError, PolicyEngine
from metaclaw.serving.sampling import SamplingParams
from tests.serving_helpers import Reference, collect, generate, make_adapter, tiny_model_dir

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def adapters(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "A": make_adapter(model_dir, root / "A", seed=1),
        "B": make_adapter(model_dir, root / "B", seed=2),
        "misfit": make_adapter(model_dir, root / "misfit", seed=3, hidden=32),
    }


@pytest.fixture()
def engine(model_dir: Path) -> Iterator[PolicyEngine]:
    eng = PolicyEngine(model_dir, name="tiny", max_batch=8, max_queue=16).start()
    yield eng
    eng.close()


def prompt(engine: PolicyEngine, text: str) -> list[int]:
    rendered = engine.render_chat([{"role": "user", "content": text}], None)
    return engine.encode(rendered, add_special_tokens=False)


@pytest.mark.parametrize("temperature", [1.0, 0.7, 0.0])
def test_token_ids_and_logprobs_agree_with_a_direct_forward_pass(
    engine: PolicyEngine, model_dir: Path, temperature: float
) -> None:
    ids = prompt(engine, "What is the capital of France?")
    result = asyncio.run(generate(engine, ids, max_tokens=24, temperature=temperature, seed=3))
    assert result.prompt_ids == ids
    assert len(result.completion_ids) == len(result.completion_logprobs) == 24
    assert result.finish_reason == "length" and result.checkpoint is None
    expected = Reference(model_dir).logprobs(ids, result.completion_ids, temperature)
    assert result.completion_logprobs == pytest.approx(expected, abs=1e-4)
    assert result.text == engine.decode(result.completion_ids)


def test_concurrent_requests_are_batched_without_changing_results(engine: PolicyEngine) -> None:
    prompts = [prompt(engine, "hi" * n) for n in (1, 5, 9, 2)]

    async def run_all() -> list:
        return await asyncio.gather(
            *(
                generate(engine, p, max_tokens=12 + i, temperature=0.0)
                for i, p in enumerate(prompts)
            )
        )

    together = asyncio.run(run_all())
    alone = [
        asyncio.run(generate(engine, p, max_tokens=12 + i, temperature=0.0))
        for i, p in enumerate(prompts)
    ]
    for a, b in zip(together, alone, strict=True):
        assert a.completion_ids == b.completion_ids
        assert a.completion_logprobs == pytest.approx(b.completion_logprobs, abs=1e-4)
    assert engine.stats.completed == 8 and engine.active == 0


def test_same_seed_same_sample(engine: PolicyEngine) -> None:
    ids = prompt(engine, "seed me")
    runs = [
        asyncio.run(generate(engine, ids, max_tokens=16, temperature=1.0, seed=42))
        for _ in range(2)
    ]
    assert runs[0].completion_ids == runs[1].completion_ids
    other = asyncio.run(generate(engine, ids, max_tokens=16, temperature=1.0, seed=43))
    assert other.completion_ids != runs[0].completion_ids


def test_stop_string_cuts_the_text(engine: PolicyEngine) -> None:
    ids = prompt(engine, "tell me something")
    free = asyncio.run(generate(engine, ids, max_tokens=30, temperature=0.0))
    stop = free.text[8:11]
    assert len(stop) == 3
    cut = asyncio.run(generate(engine, ids, max_tokens=30, temperature=0.0, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.find(stop)]
    assert cut.completion_ids == free.completion_ids[: len(cut.completion_ids)]


def test_end_of_sequence_token_is_in_the_ids_but_not_the_text(tmp_path: Path) -> None:
    plain = PolicyEngine(tiny_model_dir(tmp_path / "m1"), name="tiny").start()
    ids = prompt(plain, "stop early")
    free = asyncio.run(generate(plain, ids, max_tokens=8, temperature=0.0))
    plain.close()
    eos = free.completion_ids[3]  # make the 4th greedy token an end-of-sequence token
    two_eos = PolicyEngine(tiny_model_dir(tmp_path / "m2", extra_eos=eos), name="tiny").start()
    try:
        result = asyncio.run(generate(two_eos, ids, max_tokens=8, temperature=0.0))
    finally:
        two_eos.close()
    first = free.completion_ids.index(eos)
    assert result.completion_ids == free.completion_ids[: first + 1]
    assert result.finish_reason == "stop"
    assert result.text == two_eos.decode(free.completion_ids[:first])


def test_prompt_logprobs_for_teacher_scoring(engine: PolicyEngine, model_dir: Path) -> None:
    ids = prompt(engine, "score this prompt please")
    result = asyncio.run(generate(engine, ids, max_tokens=0, prompt_logprobs=True, top_logprobs=2))
    assert result.completion_ids == [] and result.finish_reason == "length"
    assert result.prompt_logprobs is not None and result.prompt_logprobs[0] is None
    assert result.prompt_logprobs[1:] == pytest.approx(
        Reference(model_dir).prompt_logprobs(ids), abs=1e-4
    )
    assert result.prompt_top is not None and len(result.prompt_top[1]) == 2


def test_limits_give_clear_errors(engine: PolicyEngine) -> None:
    assert engine.check_prompt([1, 2], 10_000) == engine.max_new_tokens
    with pytest.raises(EngineError, match="outside the vocabulary") as info:
        engine.check_prompt([1, 10**6], 5)
    assert info.value.status == 400
    with pytest.raises(EngineError, match=r"policy\.max_context_tokens") as info:
        engine.check_prompt([1] * (engine.max_context_tokens + 1), 5)
    assert info.value.code == "context_length_exceeded"


def test_full_queue_is_refused_with_503_and_others_finish(model_dir: Path) -> None:
    eng = PolicyEngine(model_dir, name="tiny", max_batch=1, max_queue=1).start()

    async def scenario() -> tuple:
        ids = prompt(eng, "busy")
        params = SamplingParams(max_tokens=300, temperature=0.0, ignore_eos=True)
        first = eng.submit(ids, params, stream=True, timeout_s=60)
        assert isinstance(await first.events.get(), Delta)  # admitted: the batch is full
        second = eng.submit(ids, params, stream=False, timeout_s=60)
        with pytest.raises(EngineError) as info:
            eng.submit(ids, params, stream=False, timeout_s=60)
        return info.value, await collect(first), await collect(second)

    try:
        err, first, second = asyncio.run(scenario())
    finally:
        eng.close()
    assert err.status == 503 and err.code == "overloaded" and "policy.max_queue=1" in err.message
    assert first.completion_ids == second.completion_ids and len(first.completion_ids) == 300
    assert eng.stats.rejected == 1


def test_timeout_and_cancel_free_the_slot(engine: PolicyEngine) -> None:
    ids = prompt(engine, "slow")

    async def scenario() -> EngineError:
        endless = SamplingParams(max_tokens=3000, temperature=0.0, ignore_eos=True)
        slow = engine.submit(ids, endless, stream=False, timeout_s=0.2)
        gone = engine.submit(ids, endless, stream=True, timeout_s=60)
        assert isinstance(await gone.events.get(), Delta)
        gone.cancel()
        with pytest.raises(EngineError) as info:
            await collect(slow)
        return info.value

    err = asyncio.run(scenario())
    assert err.status == 504 and "policy.request_timeout_s" in err.message
    deadline = asyncio.run(asyncio.sleep(0.2))
    assert deadline is None and engine.active == 0
    assert engine.stats.timed_out == 1 and engine.stats.cancelled == 1


def test_hot_swap_keeps_running_requests_on_their_weights(
    engine: PolicyEngine, model_dir: Path, adapters: dict[str, Path]
) -> None:
    ids = prompt(engine, "swap while I talk")

    async def scenario() -> dict:
        old = engine.submit(
            ids,
            SamplingParams(max_tokens=400, temperature=1.0, seed=1, ignore_eos=True),
            stream=True,
            timeout_s=60,
        )
        assert isinstance(await old.events.get(), Delta)  # running on the base weights
        await engine.swap("ckpt-A", adapters["A"])
        assert not old.done  # the swap happened while it was generating
        on_a = engine.submit(
            ids,
            SamplingParams(max_tokens=300, temperature=1.0, seed=2, ignore_eos=True),
            stream=True,
            timeout_s=60,
        )
        assert isinstance(await on_a.events.get(), Delta)
        await engine.swap("ckpt-B", adapters["B"])
        assert not old.done and not on_a.done
        on_b = asyncio.create_task(generate(engine, ids, max_tokens=20, temperature=1.0, seed=3))
        results = {"base": await collect(old), "A": await collect(on_a), "B": await on_b}
        await engine.swap(None, None)
        results["base-again"] = await generate(engine, ids, max_tokens=20, temperature=0.0)
        return results

    results = asyncio.run(scenario())
    assert [results[k].checkpoint for k in ("base", "A", "B", "base-again")] == [
        None,
        "ckpt-A",
        "ckpt-B",
        None,
    ]
    base, ref_a, ref_b = (
        Reference(model_dir),
        Reference(model_dir, adapters["A"]),
        Reference(model_dir, adapters["B"]),
    )
    for key, ref in (("base", base), ("A", ref_a), ("B", ref_b), ("base-again", base)):
        r = results[key]
        t = r.temperature
        assert r.completion_logprobs == pytest.approx(
            ref.logprobs(ids, r.completion_ids, t), abs=1e-4
        ), key
    # the adapters really change the model (or the check above could not fail)
    comp = results["A"].completion_ids
    assert (
        max(
            abs(a - b)
            for a, b in zip(base.logprobs(ids, comp), ref_a.logprobs(ids, comp), strict=True)
        )
        > 0.1
    )
    assert engine.stats.failed == 0


def test_adapters_that_do_not_fit_are_refused_and_nothing_changes(
    engine: PolicyEngine, adapters: dict[str, Path], tmp_path: Path
) -> None:
    engine.swap_blocking("ckpt-A", adapters["A"])
    with pytest.raises(AdapterError, match="different base model"):
        engine.swap_blocking("bad", adapters["misfit"])
    with pytest.raises(AdapterError, match="does not exist"):
        engine.swap_blocking("gone", tmp_path / "nope")
    (tmp_path / "ia3").mkdir()
    (tmp_path / "ia3" / "adapter_config.json").write_text('{"peft_type": "IA3"}')
    with pytest.raises(AdapterError, match="only LoRA"):
        engine.swap_blocking("ia3", tmp_path / "ia3")
    assert engine.policy.checkpoint_id == "ckpt-A"
    ids = prompt(engine, "still fine")
    assert asyncio.run(generate(engine, ids, max_tokens=4)).checkpoint == "ckpt-A"
