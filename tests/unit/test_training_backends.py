"""The backend contract, run against LocalBackend (tiny Qwen2 + peft) and the bigram fake.

Each test states one semantic rule of reference/tinker-api.md §10 that every backend — and so the
train flow, whichever backend it runs on — relies on.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tinker import types

from metaclaw.training.backend import TrainingBackend, learner_logprobs, loss_of
from metaclaw.training.datums import completion_span, rl_datum, sft_datum
from tests.stubs.training_fake import BigramBackend
from tests.tiny_model import build_tiny_model

torch.set_num_threads(1)

Factory = Callable[[Path], TrainingBackend]


def local(ckpt: Path) -> TrainingBackend:
    from metaclaw.training.local import LocalBackend

    model, tok = build_tiny_model(seed=0)
    return LocalBackend(model, tok, checkpoint_dir=ckpt, lora_rank=4, seed=0)


def fake(ckpt: Path) -> TrainingBackend:
    return BigramBackend(64, checkpoint_dir=ckpt, seed=0)


@pytest.fixture(params=[local, fake], ids=["local", "fake"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], TrainingBackend]:
    factory: Factory = request.param
    return lambda: factory(tmp_path / "ckpt")


PROMPT = [5, 6, 7, 8]
D1 = sft_datum(PROMPT, [9, 10, 11])
D2 = sft_datum([12, 13], [14, 15])
ADAM = types.AdamParams(learning_rate=0.05, beta1=0.9, beta2=0.95, eps=1e-8)


def logprobs(backend: TrainingBackend, data: list[types.Datum]) -> list[list[float]]:
    return learner_logprobs(backend.forward(data, "cross_entropy"))


def flat(backend: TrainingBackend, data: list[types.Datum]) -> list[float]:
    """All target logprobs of `data`, concatenated (for approximate comparisons)."""
    return [x for row in logprobs(backend, data) for x in row]


def test_satisfies_the_protocol(make: Callable[[], TrainingBackend]) -> None:
    assert isinstance(make(), TrainingBackend)


def test_targets_are_shifted_and_the_loss_is_summed(make: Callable[[], TrainingBackend]) -> None:
    b = make()
    out = b.forward([D1], "cross_entropy")
    (lp,) = learner_logprobs(out)
    assert len(lp) == D1.model_input.length == 6
    assert all(x < 0 for x in lp)
    # weights are 0 on the prompt: the loss is minus the sum over the 3 completion targets
    assert loss_of(out) == pytest.approx(-sum(lp[completion_span(4, 3)]), rel=1e-5)
    # a causal model gives the same logprob to a prefix's targets: position i predicts i+1
    prefix = sft_datum(PROMPT[:2], PROMPT[2:3])
    assert logprobs(b, [prefix])[0] == pytest.approx(lp[:2], abs=1e-5)
    # summed, not averaged, over datums
    both = loss_of(b.forward([D1, D2], "cross_entropy"))
    assert both == pytest.approx(
        loss_of(b.forward([D1], "cross_entropy")) + loss_of(b.forward([D2], "cross_entropy")),
        rel=1e-5,
    )


def test_gradients_accumulate_until_optim_step(make: Callable[[], TrainingBackend]) -> None:
    split, joint = make(), make()
    split.forward_backward([D1], "cross_entropy")
    split.forward_backward([D2], "cross_entropy")
    split.optim_step(ADAM)
    joint.forward_backward([D1, D2], "cross_entropy")
    joint.optim_step(ADAM)
    assert flat(split, [D1, D2]) == pytest.approx(flat(joint, [D1, D2]), abs=1e-5)
    before = logprobs(make(), [D1])[0]
    assert sum(logprobs(joint, [D1])[0][3:]) > sum(before[3:]) + 0.1  # SFT made D1 likelier


def test_forward_leaves_gradients_alone(make: Callable[[], TrainingBackend]) -> None:
    a, b = make(), make()
    a.forward_backward([D1], "cross_entropy")
    a.forward([D2], "cross_entropy")
    a.optim_step(ADAM)
    b.forward_backward([D1], "cross_entropy")
    b.optim_step(ADAM)
    assert flat(a, [D2]) == pytest.approx(flat(b, [D2]), abs=1e-6)


def test_learning_rate_is_taken_per_step(make: Callable[[], TrainingBackend]) -> None:
    b = make()
    before = flat(b, [D1])
    b.forward_backward([D1], "cross_entropy")
    b.optim_step(types.AdamParams(learning_rate=1e-12))
    assert flat(b, [D1]) == pytest.approx(before, abs=1e-6)
    b.forward_backward([D1], "cross_entropy")
    b.optim_step(types.AdamParams(learning_rate=0.05))
    assert flat(b, [D1]) != pytest.approx(before, abs=1e-3)


def test_importance_sampling_at_ratio_one_and_ppo_clip(make: Callable[[], TrainingBackend]) -> None:
    b = make()
    completion = [9, 10, 11]
    q = logprobs(b, [D1])[0][completion_span(4, 3)]
    is_loss = loss_of(b.forward([rl_datum(PROMPT, completion, q, 0.5)], "importance_sampling"))
    assert is_loss == pytest.approx(-0.5 * 3, abs=1e-4)  # ratio 1 → -Σ A
    # sampler far less confident than the learner (ratio e² ≫ 1.2): PPO caps at 1.2·A per token
    low_q = [x - 2.0 for x in q]
    ppo = loss_of(b.forward([rl_datum(PROMPT, completion, low_q, 1.0)], "ppo"))
    assert ppo == pytest.approx(-1.2 * 3, abs=1e-4)
    ppo_wide = loss_of(
        b.forward(
            [rl_datum(PROMPT, completion, low_q, 1.0)],
            "ppo",
            {"clip_low_threshold": 0.5, "clip_high_threshold": 2.0},
        )
    )
    assert ppo_wide == pytest.approx(-2.0 * 3, abs=1e-4)


def test_sampler_logprobs_match_the_learner(make: Callable[[], TrainingBackend]) -> None:
    b = make()
    prompt = types.ModelInput.from_ints(PROMPT)
    res = b.sample(prompt, 3, types.SamplingParams(max_tokens=6, seed=7, temperature=1.0))
    assert len(res.sequences) == 3
    for seq in res.sequences:
        assert 1 <= len(seq.tokens) <= 6 and len(seq.logprobs) == len(seq.tokens)
        assert seq.stop_reason in ("stop", "length")
        learner = logprobs(b, [sft_datum(PROMPT, seq.tokens)])[0]
        assert learner[completion_span(4, len(seq.tokens))] == pytest.approx(seq.logprobs, abs=1e-4)
    again = b.sample(prompt, 3, types.SamplingParams(max_tokens=6, seed=7))
    assert [s.tokens for s in again.sequences] == [s.tokens for s in res.sequences]
    # at temperature 2 the logprobs are of the tempered distribution: flatter than the learner's
    hot = b.sample(prompt, 1, types.SamplingParams(max_tokens=1, seed=1, temperature=2.0))
    tok, lp_hot = hot.sequences[0].tokens[0], hot.sequences[0].logprobs[0]
    lp_cold = logprobs(b, [sft_datum(PROMPT, [tok])])[0][-1]
    assert lp_hot != pytest.approx(lp_cold, abs=1e-3)


def test_sampling_stops_at_a_stop_token(make: Callable[[], TrainingBackend]) -> None:
    b = make()
    first = b.sample(
        types.ModelInput.from_ints(PROMPT),
        1,
        types.SamplingParams(max_tokens=1, seed=3, temperature=0.0),
    ).sequences[0]
    stop = first.tokens[0]  # the greedy first token, used as the stop token
    res = b.sample(
        types.ModelInput.from_ints(PROMPT),
        1,
        types.SamplingParams(max_tokens=5, seed=3, temperature=0.0, stop=[stop]),
    )
    assert res.sequences[0].tokens == [stop] and res.sequences[0].stop_reason == "stop"


def test_save_and_load_state_round_trip_bit_exactly(make: Callable[[], TrainingBackend]) -> None:
    a = make()
    a.forward_backward([D1], "cross_entropy")
    a.optim_step(ADAM)
    path = a.save_state("ckpt-1")
    saved = logprobs(a, [D1, D2])
    a.forward_backward([D2], "cross_entropy")
    a.optim_step(ADAM)  # second step uses the AdamW moments of the first
    after_a = logprobs(a, [D1, D2])

    b = make()
    b.load_state(path)
    assert logprobs(b, [D1, D2]) == saved  # exact, not approximate
    b.forward_backward([D2], "cross_entropy")
    b.optim_step(ADAM)
    assert logprobs(b, [D1, D2]) == after_a  # optimizer state restored bit-exactly


def test_load_state_discards_pending_gradients(make: Callable[[], TrainingBackend]) -> None:
    a = make()
    path = a.save_state("fresh")
    a.forward_backward([D1], "cross_entropy")  # pending, never applied
    a.load_state(path)
    a.forward_backward([D2], "cross_entropy")
    a.optim_step(ADAM)
    b = make()
    b.forward_backward([D2], "cross_entropy")
    b.optim_step(ADAM)
    assert flat(a, [D1]) == pytest.approx(flat(b, [D1]), abs=1e-6)


def test_sampler_weights_are_a_durable_path(make: Callable[[], TrainingBackend]) -> None:
    b = make()
    b.forward_backward([D1], "cross_entropy")
    b.optim_step(ADAM)
    path = Path(b.save_weights_for_sampler("cand-1"))
    assert path.is_dir() and any(path.iterdir())


def test_local_adapter_is_standard_peft(tmp_path: Path) -> None:
    """The candidate directory loads with plain peft on a fresh base model: servers can use it."""
    from peft import PeftModel

    b = local(tmp_path / "ckpt")
    b.forward_backward([D1], "cross_entropy")
    b.optim_step(ADAM)
    path = Path(b.save_weights_for_sampler("cand-1"))
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in path.iterdir()}
    base, _ = build_tiny_model(seed=0)
    served = PeftModel.from_pretrained(base, path).eval()
    ids = torch.tensor([D1.model_input.to_ints()])
    with torch.no_grad():
        logp = torch.log_softmax(served(input_ids=ids).logits.float(), -1)[0]
    targets = D1.loss_fn_inputs["target_tokens"].to_torch().long()
    served_lp = logp.gather(-1, targets[:, None]).squeeze(-1).tolist()
    assert served_lp == pytest.approx(logprobs(b, [D1])[0], abs=1e-5)
    assert not math.isnan(sum(served_lp))


def test_local_rejects_a_checkpoint_of_another_rank(tmp_path: Path) -> None:
    from metaclaw.training.local import LocalBackend

    path = local(tmp_path / "a").save_state("r4")
    model, tok = build_tiny_model(seed=0)
    other = LocalBackend(model, tok, checkpoint_dir=tmp_path / "b", lora_rank=8)
    with pytest.raises(ValueError, match="rank 4"):
        other.load_state(path)
    with pytest.raises(FileNotFoundError, match="not a LocalBackend checkpoint"):
        other.load_state(str(tmp_path))


def test_a_datum_without_loss_inputs_adds_no_gradient(make: Callable[[], TrainingBackend]) -> None:
    """All-zero weights: a zero loss and no gradient, not an autograd error (the local backend
    keeps autograd only from the first position that carries a loss input)."""
    b = make()
    empty = types.Datum(
        model_input=D1.model_input,
        loss_fn_inputs={
            "target_tokens": D1.loss_fn_inputs["target_tokens"],
            "weights": [0.0] * D1.model_input.length,
        },
    )
    out = b.forward_backward([empty], "cross_entropy")
    assert loss_of(out) == 0.0
    assert len(learner_logprobs(out)[0]) == D1.model_input.length
    assert learner_logprobs(out)[0] == pytest.approx(logprobs(b, [D1])[0], abs=1e-5)
