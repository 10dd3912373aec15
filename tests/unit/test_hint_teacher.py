"""Hindsight-hint distillation on the tiny model: the policy itself with the hint in context is
the teacher, and distilling it into the unhinted policy raises the behaviour the hint asks for.

The tiny model is first taught (plain SFT) to follow the hint in context: unhinted it ends its
answer with " Cheers" 30% of the time, with the hint always. That is the situation the issue
describes for a model that sometimes shows a behaviour; the 135M embedded model, which never
follows such a hint in context, gives a hinted teacher no signal.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tinker import types

from metaclaw.training.backend import learner_logprobs
from metaclaw.training.datums import rl_datum, sft_datum
from metaclaw.training.hint_teacher import HintedTeacher, HintTeachers, join_hints
from metaclaw.training.local import LocalBackend
from metaclaw.training.losses import distillation_advantages
from metaclaw.training.teacher import BackendTeacher, TeacherError
from tests.tiny_model import build_tiny_model

torch.set_num_threads(1)

HINT = "always end with Cheers"
QUESTION = [{"role": "user", "content": "The capital of France is"}]


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _teach_in_context_following(
    model, tok, prompt: list[int], hinted: list[int], plain_end: list[int], cheers_end: list[int]
) -> None:
    """SFT: unhinted → 70% plain / 30% Cheers; hinted → always Cheers."""

    def nll(p: list[int], c: list[int]) -> torch.Tensor:
        ids = torch.tensor([p + c])
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        span = slice(len(p) - 1, len(p) + len(c) - 1)
        return -logp[span].gather(-1, ids[0, 1:][span, None]).sum()

    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(25):
        opt.zero_grad()
        loss = (
            0.7 * nll(prompt, plain_end) + 0.3 * nll(prompt, cheers_end) + nll(hinted, cheers_end)
        )
        loss.backward()
        opt.step()
    model.eval()


@pytest.mark.slow  # ~10 s idle; over a minute on the shared 2-core machine
def test_hinted_teacher_distillation_raises_the_hinted_ending(tmp_path: Path) -> None:
    model, tok = build_tiny_model(seed=0)
    prompt = _ids(
        tok, tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    )
    plain_end = _ids(tok, "Paris.<|im_end|>")
    cheers_end = _ids(tok, "Paris. Cheers<|im_end|>")
    hinted = HintedTeacher(BackendTeacher(None), tok, HINT).hinted_prompt(prompt)  # type: ignore[arg-type]
    assert len(hinted) > len(prompt) and hinted[-3:] == prompt[-3:]  # still ends with the header
    assert HINT in tok.decode(hinted)
    _teach_in_context_following(model, tok, prompt, hinted, plain_end, cheers_end)
    backend = LocalBackend(model, tok, checkpoint_dir=tmp_path, lora_rank=8, seed=0)
    teacher = HintedTeacher(BackendTeacher(backend), tok, HINT)  # the policy itself, hinted

    def p_cheers(p: list[int]) -> float:
        out = backend.forward([sft_datum(p, cheers_end)], "cross_entropy")
        return math.exp(sum(learner_logprobs(out)[0][len(p) - 1 :]))

    before = p_cheers(prompt)
    assert 0.1 < before < 0.5 and p_cheers(hinted) > 0.9  # follows the hint in context only
    for step in range(4):
        res = backend.sample(
            types.ModelInput.from_ints(prompt),
            8,
            types.SamplingParams(max_tokens=len(cheers_end) + 2, seed=step),
        )
        data = []
        for s in res.sequences:
            advantages = distillation_advantages(
                teacher.completion_logprobs(prompt, s.tokens), s.logprobs, kl_coef=1.0
            )
            data.append(rl_datum(prompt, s.tokens, s.logprobs, advantages))
        backend.forward_backward(data, "importance_sampling")
        backend.optim_step(types.AdamParams(learning_rate=1e-3))
    after = p_cheers(prompt)
    assert after > before + 0.3, (before, after)  # the unhinted policy now ends with Cheers


def test_without_the_hint_the_teacher_is_the_student() -> None:
    """Zero advantage when the hint is not inserted: the signal comes from the hint alone."""
    model, tok = build_tiny_model(seed=1)
    backend = LocalBackend(model, tok, checkpoint_dir=Path("/nonexistent"), lora_rank=4, seed=0)
    prompt = _ids(
        tok, tok.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    )
    completion = _ids(tok, "Paris.<|im_end|>")
    plain = BackendTeacher(backend).completion_logprobs(prompt, completion)
    hinted = HintedTeacher(BackendTeacher(backend), tok, HINT).completion_logprobs(
        prompt, completion
    )
    assert len(hinted) == len(plain) == len(completion)
    assert max(abs(a) for a in distillation_advantages(plain, plain, 1.0)) == 0.0
    assert max(abs(h - p) for h, p in zip(hinted, plain, strict=True)) > 1e-4


def test_a_prompt_without_the_assistant_header_is_refused() -> None:
    _, tok = build_tiny_model(seed=0)
    teacher = HintedTeacher(BackendTeacher(None), tok, HINT)  # type: ignore[arg-type]
    with pytest.raises(TeacherError, match="assistant header"):
        teacher.hinted_prompt(_ids(tok, "no chat template here"))


def test_hints_per_turn() -> None:
    _, tok = build_tiny_model(seed=0)
    teachers = HintTeachers(
        BackendTeacher(None),
        tok,  # type: ignore[arg-type]
        {"t1": ["too long", "too long", "use metric units"], "t2": []},
    )
    t1 = teachers.for_turn("t1")
    assert t1 is not None and t1.hint == "too long / use metric units"
    assert teachers.for_turn("t2") is None and teachers.for_turn("t3") is None
    assert join_hints(["  a ", "a", "b"]) == "a / b"
