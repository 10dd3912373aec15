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
