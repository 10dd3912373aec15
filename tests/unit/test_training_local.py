"""LocalBackend learns: a few importance-sampling steps make a target token the likely answer."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tinker import types

from metaclaw.training.backend import learner_logprobs
from metaclaw.training.datums import rl_datum, sft_datum
from metaclaw.training.local import LocalBackend
from tests.tiny_model import build_tiny_model

torch.set_num_threads(1)


def test_importance_sampling_raises_the_reward_of_a_toy_objective(tmp_path: Path) -> None:
    model, tok = build_tiny_model(seed=0)
    backend = LocalBackend(model, tok, checkpoint_dir=tmp_path, lora_rank=8, seed=0)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "The capital of France is"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    pids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():  # a target the untrained model rarely says (its 5th choice)
        logits = backend.model(input_ids=torch.tensor([pids])).logits[0, -1]
    target = int(torch.topk(logits, 5).indices[4])

    def p_target() -> float:
        out = backend.forward([sft_datum(pids, [target])], "cross_entropy")
        return math.exp(learner_logprobs(out)[0][-1])

    p_before = p_target()
    means = []
    for it in range(10):
        res = backend.sample(
            types.ModelInput.from_ints(pids), 8, types.SamplingParams(max_tokens=4, seed=it)
        )
        rewards = [s.tokens.count(target) / len(s.tokens) for s in res.sequences]
        mean = sum(rewards) / len(rewards)
        means.append(mean)
        data = [
            rl_datum(pids, s.tokens, s.logprobs, r - mean)  # GRPO-centred advantages
            for s, r in zip(res.sequences, rewards, strict=True)
            if r != mean
        ]
        if data:
            backend.forward_backward(data, "importance_sampling")
            backend.optim_step(types.AdamParams(learning_rate=3e-2))
    assert p_before < 0.1
    assert sum(means[-3:]) / 3 > 0.8 > means[0]
    assert p_target() > 0.8


def test_a_batch_of_prompts_samples_as_each_prompt_alone(tmp_path: Path) -> None:
    """The gate decodes its prompts as one left-padded batch; each prompt's replies must be
    what it gets alone (greedy: the same tokens; seeded: the same draws), with its own
    max_tokens and stop, whatever its length and neighbours."""
    model, tok = build_tiny_model(seed=3)
    backend = LocalBackend(model, tok, checkpoint_dir=tmp_path, lora_rank=8, seed=0)
    prompts = [
        types.ModelInput.from_ints(tok(text, add_special_tokens=False)["input_ids"])
        for text in ["Hi", "The capital of France is a city", "Count: one two three four five"]
    ]
    greedy = types.SamplingParams(max_tokens=7, temperature=0.0)
    seeded = types.SamplingParams(max_tokens=5, temperature=1.0, seed=11)
    requests = [(prompts[0], 1, greedy), (prompts[1], 3, seeded), (prompts[2], 2, greedy)]
    alone = [backend.sample(p, n, params) for p, n, params in requests]
    stop_at = alone[2].sequences[0].tokens[2]  # the third greedy token of prompt 2 stops it
    requests.append(
        (prompts[2], 1, types.SamplingParams(max_tokens=9, temperature=0.0, stop=[stop_at]))
    )
    alone.append(backend.sample(*requests[-1]))

    batched = backend.sample_batch(requests)

    for one, many in zip(alone, batched, strict=True):
        assert [s.tokens for s in many.sequences] == [s.tokens for s in one.sequences]
        assert [s.stop_reason for s in many.sequences] == [s.stop_reason for s in one.sequences]
        for a, b in zip(one.sequences, many.sequences, strict=True):
            assert torch.allclose(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-4)
    assert [len(s.tokens) for s in batched[0].sequences] == [7]  # each its own max_tokens
    assert [len(s.tokens) for s in batched[1].sequences] == [5, 5, 5]
    assert batched[3].sequences[0].tokens[-1] == stop_at
    assert batched[3].sequences[0].stop_reason == "stop"
    assert backend.sample_batch([]) == []
