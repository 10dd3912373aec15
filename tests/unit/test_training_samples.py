"""Routing turns to samples, advantages, micro-batches, prompt rendering, the run report."""

from __future__ import annotations

import pytest

from metaclaw.training.render import RenderError, render_turn
from metaclaw.training.report import run_markdown, sparkline
from metaclaw.training.samples import (
    Selection,
    SelectionPolicy,
    Turn,
    assign_advantages,
    pack_batch,
    select_samples,
)
from tests.tiny_model import build_tokenizer


def policy_turn(
    turn_id: str,
    reward: float | None,
    *,
    prompt: list[int] | None = None,
    version: int | None = None,
    ts: float = 0.0,
) -> Turn:
    return Turn(
        turn_id=turn_id,
        ts=ts,
        served_by="policy",
        source="live",
        prompt_token_ids=prompt or [1, 2, 3],
        completion_token_ids=[4, 5],
        completion_logprobs=[-0.5, -0.25],
        skill_set_version=version,
        reward=reward,
    )


def upstream_turn(turn_id: str, reward: float | None, **extra: object) -> Turn:
    return Turn(
        turn_id=turn_id,
        served_by="upstream",
        source="live",
        request={"messages": [{"role": "user", "content": "hi"}]},
        completion_text="hello",
        reward=reward,
        **extra,
    )  # type: ignore[arg-type]


def fake_render(turn: Turn) -> tuple[list[int], list[int], int]:
    return [7, 7], [8], 0


def select(turns: list[Turn], loss_fn: str = "importance_sampling", **kw: object) -> Selection:
    return select_samples(turns, SelectionPolicy(loss_fn=loss_fn, **kw), fake_render)  # type: ignore[arg-type]


def test_on_policy_turns_feed_rl_and_off_policy_feed_sft_only() -> None:
    fake_logprobs = {
        "prompt_token_ids": [1, 2],
        "completion_token_ids": [3],
        "completion_logprobs": [-0.1],
    }
    turns = [
        policy_turn("p1", 1.0, prompt=[1]),
        policy_turn("p2", -1.0, prompt=[2]),
        upstream_turn("u-good", 0.9),
        upstream_turn("u-bad", 0.1),
        # upstream turns carrying (made-up) logprobs are still off-policy
        upstream_turn("u-logprobs", 1.0, **fake_logprobs),
        # a backfilled turn claiming to be policy-served is off-policy too
        Turn(
            turn_id="b1",
            served_by="policy",
            source="backfill:openai",
            reward=1.0,
            request={"messages": [{"role": "user", "content": "x"}]},
            completion_text="y",
            **fake_logprobs,
        ),  # type: ignore[arg-type]
    ]
    sel = select(turns)
    kinds = {s.turn_id: s.kind for s in sel.samples}
    assert kinds == {"p1": "rl", "p2": "rl", "u-good": "sft", "u-logprobs": "sft", "b1": "sft"}
    assert sel.skipped == {"below_sft_threshold": 1}
    assert all(s.sampler_logprobs is None for s in sel.samples if s.kind == "sft")
    # under cross-entropy, a policy turn trains on its served tokens, not a re-rendering
    ce = select([policy_turn("p", 0.8)], loss_fn="cross_entropy")
    assert [(s.kind, s.prompt, s.completion) for s in ce.samples] == [("sft", [1, 2, 3], [4, 5])]


def test_stale_skill_set_turns_are_excluded_and_counted() -> None:
    sel = select(
        [policy_turn("old", 1.0, version=1), policy_turn("new", 1.0, version=2, prompt=[9])],
        current_skill_set_version=2,
    )
    assert [s.turn_id for s in sel.samples] == ["new"]
    assert sel.skipped["stale_skill_set"] == 1 and sel.stale_turn_ids == ["old"]


def test_group_centring_baseline_for_singletons_and_uniform_groups() -> None:
    turns = [
        policy_turn("g1", 1.0, prompt=[1]),
        policy_turn("g2", 0.0, prompt=[1]),
        policy_turn("g3", -1.0, prompt=[1]),
        policy_turn("u1", 1.0, prompt=[2]),
        policy_turn("u2", 1.0, prompt=[2]),
        policy_turn("single", 0.5, prompt=[3]),
    ]
    sel = select(turns, baseline=0.25)
    adv = {s.turn_id: (s.advantage, s.advantage_method) for s in sel.samples}
    assert adv["g1"] == (pytest.approx(1.0), "group")
    assert adv["g3"] == (pytest.approx(-1.0), "group")
    assert "g2" not in adv  # reward equal to its group mean: no signal
    assert adv["u1"] == adv["u2"] == (pytest.approx(0.75), "baseline")  # uniform group
    assert adv["single"] == (pytest.approx(0.25), "baseline")
    assert sel.skipped["zero_advantage"] == 1


def test_a_batch_of_zero_advantages_is_never_formed() -> None:
    sel = select(
        [policy_turn("a", 0.5, prompt=[1]), policy_turn("b", 0.5, prompt=[2])], baseline=0.5
    )
    assert sel.samples == [] and sel.skipped["zero_advantage"] == 2
    assert pack_batch(sel.samples, 1) is None


def test_a_zero_advantage_turn_with_a_rule_hint_stays_in_the_batch() -> None:
    """All rejected, baseline caught up: no RL signal left, but the user's rule still teaches
    (the trainer adds rule-holding replies for these turns), so they are not dropped."""
    turns = [policy_turn("ruled", -1.0, prompt=[1]), policy_turn("plain", -1.0, prompt=[2])]
    sel = select(turns, baseline=-1.0, keep_turns=frozenset({"ruled"}))
    assert [(s.turn_id, s.advantage) for s in sel.samples] == [("ruled", 0.0)]
    assert sel.skipped["zero_advantage"] == 1


def test_first_step_baseline_is_zero_so_n1_gets_its_reward() -> None:
    sel = select([policy_turn("only", -0.5)])
    assert sel.samples[0].advantage == pytest.approx(-0.5)


def test_unrewarded_turns_wait_except_for_distillation() -> None:
    assert select([policy_turn("p", None)]).skipped == {"no_reward": 1}
    distill = select([policy_turn("p", None), upstream_turn("u", None)], loss_fn="distillation")
    assert [s.turn_id for s in distill.samples] == ["p"]
    assert distill.samples[0].advantage is None  # filled from the teacher by the trainer


def test_too_long_and_unrenderable_turns_are_skipped() -> None:
    def broken(turn: Turn) -> tuple[list[int], list[int]]:
        raise RenderError("nope")

    sel = select_samples([upstream_turn("u", 1.0)], SelectionPolicy("importance_sampling"), broken)
    assert sel.skipped == {"unrenderable": 1}
    long = select([policy_turn("p", 1.0, prompt=list(range(10)))], max_seq_len=5)
    assert long.skipped == {"too_long": 1}


def test_pack_batch_takes_oldest_whole_groups() -> None:
    turns = [policy_turn(f"g{i}", float(i), prompt=[1], ts=10 + i) for i in range(3)]
    turns += [policy_turn("old", 1.0, prompt=[2], ts=1), policy_turn("new", 1.0, prompt=[3], ts=99)]
    samples = select(turns, baseline=0.0).samples  # g1 has reward == group mean → dropped
    batch = pack_batch(samples, 2)
    assert batch is not None
    assert [s.turn_id for s in batch] == ["old", "g0", "g2"]  # the group is not split
    assert pack_batch(samples, 5) is None
    with pytest.raises(ValueError, match="batch_size"):
        pack_batch(samples, 0)


def test_assign_advantages_ignores_sft_samples() -> None:
    sel = select([upstream_turn("u", 1.0)])
    assign_advantages(sel.samples, 0.3)
    assert sel.samples[0].advantage is None


def test_render_turn_matches_the_policy_server_and_stops_at_end_of_turn() -> None:
    from metaclaw.serving.chat import render_prompt

    tok = build_tokenizer()
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]},
    ]
    prompt, completion, cut = render_turn(tok, {"model": "m", "messages": messages}, "Paris.", None)
    assert cut == 0
    served = tok(render_prompt(tok, messages, None), add_special_tokens=False)["input_ids"]
    assert prompt == served  # the very ids the policy server would have generated after
    assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    assert tok.decode(completion) == "Paris.<|im_end|>"
    assert completion[-1] == tok.eos_token_id


def test_render_writes_tool_calls_the_way_the_server_reads_them() -> None:
    tok = build_tokenizer()  # plain ChatML: no native tools, so calls become <tool_call> text
    calls = [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "read_file", "arguments": '{"path": "a.py"}'},
        }
    ]
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {}}}]
    prompt, completion, _ = render_turn(
        tok, {"messages": [{"role": "user", "content": "read it"}], "tools": tools}, None, calls
    )
    assert "read_file" in tok.decode(prompt)  # tools described in the system message
    text = tok.decode(completion)
    assert text.startswith("<tool_call>") and '"name": "read_file"' in text
    assert text.endswith("<|im_end|>")


def test_render_maps_anthropic_requests_and_names_bad_ones() -> None:
    tok = build_tokenizer()
    request = {
        "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    }
    prompt, _, _ = render_turn(tok, request, "Hello", None)
    assert tok.decode(prompt).startswith("<|im_start|>system\nBe brief.<|im_end|>")
    with pytest.raises(RenderError, match="no messages"):
        render_turn(tok, {"messages": []}, "x", None)
    with pytest.raises(RenderError, match="neither completion text nor tool calls"):
        render_turn(tok, request, "", None)


def test_sparkline_and_report() -> None:
    assert sparkline([0.0, 1.0, None, 0.5]) == "▁█·▅"
    assert sparkline([2.0, 2.0]) == "▅▅"
    history = [
        {
            "step": 1,
            "status": "ok",
            "loss": 1.0,
            "reward_mean": 0.1,
            "kl": 0.0,
            "tokens": 10,
            "checkpoint_id": "c1",
        },
        {
            "step": 2,
            "status": "ok",
            "loss": 0.5,
            "reward_mean": 0.9,
            "kl": 0.0,
            "tokens": 10,
            "checkpoint_id": "c2",
        },
    ]
    outcomes = [
        {
            "status": "trained",
            "step": 2,
            "checkpoint_id": "c2",
            "path": "/x",
            "reason": "",
            "metrics": {"n_samples": 4, "loss": 0.5},
            "skipped": {"too_long": 1},
        }
    ]
    text = run_markdown(outcomes, history)
    assert "step **2** trained on 4 turns" in text and "too_long 1" in text
    assert "reward mean `▁█`" in text and "| 2 | ok | 0.5 | 0.9 |" in text


@pytest.mark.parametrize(
    "served, requested",
    [
        ({"sampling_temperature": 0.7}, {}),  # the policy's trace says T = 0.7
        ({"sampling_temperature": 1.0, "sampling_top_p": 0.9}, {}),  # nucleus-renormalised
        ({}, {"top_p": 0.5}),  # an older row without the trace columns: the request's value
        ({"sampling_temperature": 1.0, "sampling_top_p": 1.0}, {"top_k": 20}),
    ],
)
def test_turns_sampled_unlike_the_learner_scores_are_not_importance_weighted(
    served: dict[str, float], requested: dict[str, float]
) -> None:
    odd = Turn(
        turn_id="odd",
        served_by="policy",
        source="live",
        prompt_token_ids=[1, 2],
        completion_token_ids=[3],
        completion_logprobs=[-0.2],
        reward=0.9,
        request={"messages": [{"role": "user", "content": "x"}], **requested},
        **served,
    )  # type: ignore[arg-type]
    assert odd.on_policy and not odd.sampled_as_learner_scores
    sel = select([odd, policy_turn("t1", 1.0)])
    assert {s.turn_id: s.kind for s in sel.samples} == {"odd": "sft", "t1": "rl"}
    assert sel.notes == {"sampling_mismatch": 1}


def test_staleness_is_counted_from_the_learners_lineage() -> None:
    def by(turn_id: str, checkpoint: str | None) -> Turn:
        return Turn(
            turn_id=turn_id,
            served_by="policy",
            source="live",
            prompt_token_ids=[1],
            completion_token_ids=[3],
            completion_logprobs=[-0.2],
            reward=1.0,
            policy_checkpoint=checkpoint,
        )

    turns = [by("now", "c3"), by("two", "c1"), by("base", None), by("other", "x9")]
    sel = select(turns, lineage=("c3", "c2", "c1", None), max_staleness=2, baseline=0.5)
    assert {s.turn_id: s.staleness for s in sel.samples if s.kind == "rl"} == {"now": 0, "two": 2}
    assert sel.notes == {"stale_policy": 1, "other_lineage": 1}


def test_sft_renders_the_prompt_the_model_was_served() -> None:
    """The recorded skills block is put back where the proxy put it (`injected_text`)."""
    from metaclaw.skills.query import inject
    from metaclaw.training.render import served_request

    tok = build_tokenizer()
    block = "## Skills\n- answer in one word"
    openai_req = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Capital?"},
        ]
    }
    served = served_request(openai_req, block, anthropic=False)
    assert served["messages"] == inject(openai_req["messages"], block)
    prompt, _, _ = render_turn(tok, served, "Paris.", None)
    assert "answer in one word" in tok.decode(prompt)
    anthropic_req = {"messages": [{"role": "user", "content": "Capital?"}]}
    prompt, _, _ = render_turn(
        tok, served_request(anthropic_req, block, anthropic=True), "Paris.", None
    )
    assert tok.decode(prompt).startswith(f"<|im_start|>system\n{block}<|im_end|>")
    assert served_request(openai_req, None, anthropic=False) is openai_req


def test_long_prompts_are_cut_reproducibly_not_dropped() -> None:
    from metaclaw.training.render import TooLongError

    tok = build_tokenizer()
    system = "You are a helpful assistant. " * 60  # an agent's long system prompt
    history = []
    for i in range(12):
        history += [
            {"role": "user", "content": f"Question {i}: the capital of France?"},
            {"role": "assistant", "content": f"Paris, answer {i}."},
        ]
    request = {
        "messages": [
            {"role": "system", "content": system},
            *history,
            {"role": "user", "content": "And the last question?"},
        ]
    }
    full, completion, cut = render_turn(tok, request, "Paris.", None)
    assert cut == 0
    limit = len(full) + len(completion) - 120
    prompt, completion2, cut = render_turn(tok, request, "Paris.", None, limit)
    assert len(prompt) + len(completion2) <= limit and cut > 0
    text = tok.decode(prompt)
    assert text.startswith("<|im_start|>system\nYou are a helpful") and "last question" in text
    assert "Question 0:" not in text, "the oldest messages go first"
    assert render_turn(tok, request, "Paris.", None, limit) == (prompt, completion2, cut)
    # 24 older messages dropped, then the system text cut to its head (and recorded)
    tight, _, cut = render_turn(tok, request, "Paris.", None, 200)
    assert len(tight) < 200 and "truncated" in tok.decode(tight) and cut == 24 + 1
    with pytest.raises(TooLongError):
        render_turn(tok, request, "Paris.", None, 30)
    long_turn = Turn(
        turn_id="long", served_by="upstream", request=request, reward=1.0, completion_text="Paris."
    )
    sel = select_samples(
        [long_turn],
        SelectionPolicy(loss_fn="ppo", max_seq_len=limit),
        lambda t: render_turn(tok, t.request or {}, "Paris.", None, limit),
    )
    assert sel.notes == {"truncated": 1} and sel.samples[0].truncated > 0
