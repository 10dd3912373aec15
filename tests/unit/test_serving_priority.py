"""Users first (issue 15, item 4): interactive requests are admitted before background ones and
background generations pause (and resume unchanged) while users are served.

The planner is pure logic and tested directly; the engine runs the tiny random model with its
worker held at round boundaries (`RoundGate`), so "within one decode step" is counted in rounds,
not guessed from timings; the header goes through the real app on a real socket with the
official `openai` client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import torch

from metaclaw.serving.app import create_app
from metaclaw.serving.engine import Delta, PolicyEngine, Request, Result
from metaclaw.serving.priority import BACKGROUND_HEADERS, HEADER, Priority, parse_priority
from metaclaw.serving.sampling import SamplingParams
from metaclaw.serving.scheduler import plan, within_budget
from tests.served_app import ServedApp
from tests.serving_helpers import RoundGate, collect, tiny_model_dir

torch.set_num_threads(1)
USER, BG = Priority.INTERACTIVE, Priority.BACKGROUND


# ----- the planner ---------------------------------------------------------------------------


@dataclass(eq=False)
class G:
    priority: Priority
    size: int
    paused: bool = False


def test_waiting_users_are_admitted_and_background_pauses_newest_first() -> None:
    old, new = G(BG, 2), G(BG, 2)
    p = plan([old, new], waiting_interactive=1, waiting_background=5, max_batch=4, background_cap=4)
    assert p.admit_interactive == 1 and p.pause == [new] and p.admit_background == 0
    # cap 0 (the CPU default): every background group pauses while a user is served
    p = plan([old, new], waiting_interactive=1, waiting_background=0, max_batch=8, background_cap=0)
    assert p.admit_interactive == 1 and p.pause == [new, old]


def test_paused_work_resumes_oldest_first_before_new_background_is_admitted() -> None:
    old, new = G(BG, 3, paused=True), G(BG, 3, paused=True)
    p = plan([old, new], waiting_interactive=0, waiting_background=9, max_batch=4, background_cap=0)
    assert p.resume == [old] and p.admit_background == 0  # `new` does not fit yet
    p = plan([old, new], waiting_interactive=0, waiting_background=9, max_batch=8, background_cap=0)
    assert p.resume == [old, new] and p.admit_background == 2


def test_no_background_is_admitted_while_users_run_beyond_the_cap() -> None:
    user = G(USER, 1)
    p = plan([user], waiting_interactive=0, waiting_background=4, max_batch=8, background_cap=0)
    assert p.admit_background == 0 and not p.pause
    p = plan([user], waiting_interactive=0, waiting_background=4, max_batch=8, background_cap=2)
    assert p.admit_background == 2
    # without background work in play, interactive requests are admitted FIFO as before
    p = plan(
        [G(USER, 7)], waiting_interactive=3, waiting_background=0, max_batch=8, background_cap=0
    )
    assert p.admit_interactive == 1


def test_background_prefill_is_split_by_the_token_budget() -> None:
    assert within_budget([300, 300, 300], 3, 512) == 1  # one judge prompt per round
    assert within_budget([100, 200, 300], 3, 512) == 2
    assert within_budget([900, 10], 2, 512) == 1  # a long prompt still starts, alone
    assert within_budget([300, 300, 300], 2, 0) == 2  # 0: no budget, only the count
    assert within_budget([10, 10, 10], 0, 512) == 0


def test_the_header_only_lowers_priority() -> None:
    assert parse_priority(None) is USER and parse_priority("") is USER
    assert parse_priority(" Background ") is BG and parse_priority("interactive") is USER
    assert BACKGROUND_HEADERS == {HEADER: "background"}
    assert min(Priority) is USER  # the default is already the highest class
    for value in ("high", "urgent", "0", "-1"):
        with pytest.raises(ValueError, match="background or interactive"):
            parse_priority(value)


# ----- the engine ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture()
def gated(model_dir: Path) -> Iterator[tuple[PolicyEngine, RoundGate]]:
    engine = PolicyEngine(model_dir, name="tiny", max_batch=2, max_queue=16)
    gate = RoundGate()
    engine.round_hook = gate
    engine.start()
    yield engine, gate
    gate.release()
    engine.close()


def _ids(engine: PolicyEngine, text: str) -> list[int]:
    rendered = engine.render_chat([{"role": "user", "content": text}], None)
    return engine.encode(rendered, add_special_tokens=False)


def _params(max_tokens: int) -> SamplingParams:
    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def test_a_user_request_starts_within_one_round_and_finishes_first(
    gated: tuple[PolicyEngine, RoundGate],
) -> None:
    """Two background generations fill the batch (max_batch 2). A user request arriving between
    two rounds gets its first tokens in the very next round while the background rows do not
    advance; it finishes first; then both background requests finish with exactly the tokens
    they produce alone (a pause changes nothing in them)."""
    engine, gate = gated
    jobs = [_ids(engine, "judge this turn"), _ids(engine, "critique that turn")]

    async def scenario() -> tuple[list[Result], dict[str, object]]:
        alone = [await collect(_submit(engine, ids, 120, BG)) for ids in jobs]
        bg = [_submit(engine, ids, 120, BG, stream=True) for ids in jobs]
        for req in bg:  # both admitted and generating: the batch is full
            assert isinstance(await asyncio.wait_for(req.events.get(), 30), Delta)
        await asyncio.to_thread(gate.hold)
        before = [len(r.completion_ids) for r in bg]
        user = _submit(engine, _ids(engine, "hello there"), 8, USER)
        await asyncio.to_thread(gate.step, 1)
        seen = {
            "user_tokens": len(user.completion_ids),
            "bg_advanced": [len(r.completion_ids) - n for n, r in zip(before, bg, strict=True)],
            "paused": engine.paused,
        }
        gate.release()
        seen["user_tokens_final"] = len((await collect(user)).completion_ids)
        seen["bg_done_when_user_done"] = [r.done for r in bg]
        seen["bg"] = [await collect(r) for r in bg]
        return alone, seen

    alone, seen = asyncio.run(scenario())
    assert seen["user_tokens"] >= 1, "the user request did not start in the next round"
    assert seen["bg_advanced"] == [0, 0] and seen["paused"] == 2
    assert seen["user_tokens_final"] == 8 and seen["bg_done_when_user_done"] == [False, False]
    finished = seen["bg"]
    assert isinstance(finished, list)
    for got, ref in zip(finished, alone, strict=True):
        assert got.completion_ids == ref.completion_ids
        assert got.completion_logprobs == pytest.approx(ref.completion_logprobs, abs=1e-5)
    assert engine.stats.preempted >= 1 and engine.paused == 0 and engine.active == 0


def test_a_background_flood_finishes_once_users_stop(model_dir: Path) -> None:
    """More background requests than the batch holds, interleaved with user requests: every
    one of them completes with all its tokens (nothing starves, nothing is lost)."""
    engine = PolicyEngine(model_dir, name="tiny", max_batch=2, max_queue=32).start()

    async def scenario() -> tuple[list[Result], list[Result]]:
        ids = _ids(engine, "flood")
        bg = [_submit(engine, ids, 24, BG) for _ in range(7)]
        users = []
        for _ in range(3):
            users.append(await collect(_submit(engine, ids, 6, USER)))
        return users, [await collect(r) for r in bg]

    try:
        users, bg = asyncio.run(scenario())
    finally:
        engine.close()
    assert [len(r.completion_ids) for r in users] == [6] * 3
    assert [len(r.completion_ids) for r in bg] == [24] * 7
    assert engine.active == engine.paused == engine.queued == 0


def test_each_class_has_its_own_queue(model_dir: Path) -> None:
    """A background flood that fills its queue gets 503s; a user request is still accepted."""
    engine = PolicyEngine(model_dir, name="tiny", max_batch=1, max_queue=2)
    gate = RoundGate(held=True)  # nothing is admitted until the queues are filled
    engine.round_hook = gate
    engine.start()

    async def scenario() -> tuple[int, Request]:
        ids = _ids(engine, "queue")
        for _ in range(2):
            _submit(engine, ids, 4, BG)
        try:
            _submit(engine, ids, 4, BG)
        except Exception as exc:
            status = getattr(exc, "status", 0)
        user = _submit(engine, ids, 4, USER)
        gate.release()
        await collect(user)
        return status, user

    try:
        status, user = asyncio.run(scenario())
    finally:
        gate.release()
        engine.close()
    assert status == 503 and user.done


def test_background_prompts_are_prefilled_a_budget_per_round(model_dir: Path) -> None:
    """Three background requests waiting together are prefilled over three rounds when one
    prompt fills the budget (a user arriving meanwhile waits for one prefill, not three), and
    all of them still finish."""
    engine = PolicyEngine(model_dir, name="tiny", max_batch=8, background_prefill_tokens=8)
    gate = RoundGate(held=True)
    engine.round_hook = gate
    engine.start()

    async def scenario() -> tuple[list[int], list[Result]]:
        ids = _ids(engine, "a prompt longer than the budget")
        assert len(ids) > 8
        bg = [_submit(engine, ids, 30, BG) for _ in range(3)]
        admitted = []
        for _ in range(3):
            await asyncio.to_thread(gate.step, 1)
            admitted.append(engine.active)
        gate.release()
        return admitted, [await collect(r) for r in bg]

    try:
        admitted, done = asyncio.run(scenario())
    finally:
        gate.release()
        engine.close()
    assert admitted == [1, 2, 3]
    assert [len(r.completion_ids) for r in done] == [30] * 3


def _submit(
    engine: PolicyEngine, ids: list[int], n: int, priority: Priority, stream: bool = False
) -> Request:
    return engine.submit(ids, _params(n), stream=stream, timeout_s=120, priority=priority)


# ----- the header through the HTTP app --------------------------------------------------------


def test_the_priority_header_through_the_http_app(model_dir: Path, tmp_path: Path) -> None:
    """The judge's client marks its calls background; a user's call (no header) arriving while
    one runs in the only batch slot finishes first. A header value that is not a class is a
    400 naming the accepted values."""
    engine = PolicyEngine(model_dir, name="tiny", max_batch=1, max_queue=8)
    gate = RoundGate()
    engine.round_hook = gate
    app = create_app(engine, home=tmp_path, request_timeout_s=60)
    order: list[str] = []

    async def call(client: openai.AsyncOpenAI, name: str, max_tokens: int) -> object:
        reply = await client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": name}],
            max_tokens=max_tokens,
            temperature=0.0,
            extra_body={"ignore_eos": True},
        )
        order.append(name)
        return reply

    async def scenario(url: str) -> openai.BadRequestError:
        common = {"base_url": f"{url}/v1", "api_key": "k", "max_retries": 0}
        judge = openai.AsyncOpenAI(**common, default_headers=BACKGROUND_HEADERS)
        user = openai.AsyncOpenAI(**common)
        background = asyncio.create_task(call(judge, "judge", 200))
        while engine.active == 0:
            await asyncio.sleep(0.005)
        await asyncio.to_thread(gate.hold)
        interactive = asyncio.create_task(call(user, "user", 4))
        while engine.queued == 0:
            await asyncio.sleep(0.005)
        gate.release()
        await asyncio.gather(background, interactive)
        bad = openai.AsyncOpenAI(**common, default_headers={HEADER: "urgent"})
        with pytest.raises(openai.BadRequestError) as info:
            await call(bad, "bad", 2)
        for client in (judge, user, bad):
            await client.close()
        return info.value

    with ServedApp(app) as served:
        try:
            refused = asyncio.run(scenario(served.url))
        finally:
            gate.release()
    assert order == ["user", "judge"]
    assert engine.stats.preempted == 1 and engine.stats.completed == 2
    assert refused.body["code"] == "invalid_priority"
    assert "background or interactive" in refused.body["message"]
