"""The hinted teacher: the policy itself, with the user's hint in its context (hindsight OPD).

When a user corrects a reply ("no, always end with 'Cheers'") the correction is a *hint*
(`metaclaw/scoring/hints.py`). Hindsight-hint distillation asks: had the policy known the hint
when it replied, how likely would it have found each token it actually sampled? The teacher is
the same policy scoring the student's own completion with the hint inserted just before the
reply; per-token advantage = teacher logprob − student logprob
(`losses.distillation_advantages`), so tokens the hint makes likelier are pushed up and the
unhinted policy moves toward what the hint asks, with no reference answer and no reward model.

The hint goes in as a user message right before the assistant header, rendered with the
model's own chat template (found by rendering two conversations and taking the difference, so
any template that accepts consecutive user messages works). Only the prompt changes; the
completion token ids are scored as served, so positions line up by construction.

A teacher with no signal teaches nothing: a hinted copy helps only for behaviours the model
follows in context. The 135M embedded model almost never does (see docs/training.md), so on
embedded defaults point `scorer` at a stronger model sharing the tokenizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from metaclaw.training.teacher import Teacher, TeacherError

HINT_TEMPLATE = "Feedback on your previous answer, to follow from now on: {hint}"
_PROBE_USER = "Hello."


class HintedTeacher:
    """Scores the student's tokens with `scorer` after inserting `hint` into the prompt."""

    def __init__(self, scorer: Teacher, tokenizer: Any, hint: str) -> None:
        self.scorer = scorer
        self.hint = hint
        self._header, self._block = _template_pieces(tokenizer, hint)

    def hinted_prompt(self, prompt: Sequence[int]) -> list[int]:
        """`prompt` (ending with the assistant header) with the hint message before the header."""
        n = len(self._header)
        if n == 0 or list(prompt[-n:]) != self._header:
            raise TeacherError(
                "the prompt does not end with this chat template's assistant "
                "header; a hint can only be inserted before the reply"
            )
        return [*prompt[:-n], *self._block, *self._header]

    def completion_logprobs(self, prompt: Sequence[int], completion: Sequence[int]) -> list[float]:
        return self.scorer.completion_logprobs(self.hinted_prompt(prompt), completion)


class HintTeachers:
    """One hinted teacher per turn that has hints; the trainer asks per sample."""

    def __init__(self, scorer: Teacher, tokenizer: Any, hints: Mapping[str, Sequence[str]]) -> None:
        self._teachers = {
            turn_id: HintedTeacher(scorer, tokenizer, join_hints(texts))
            for turn_id, texts in hints.items()
            if texts
        }

    def for_turn(self, turn_id: str) -> HintedTeacher | None:
        return self._teachers.get(turn_id)


def join_hints(texts: Sequence[str]) -> str:
    """Several hints about one turn (a correction and a comment), in order, without repeats."""
    seen: list[str] = []
    for text in texts:
        if text.strip() and text.strip() not in seen:
            seen.append(text.strip())
    return " / ".join(seen)


def _template_pieces(tokenizer: Any, hint: str) -> tuple[list[int], list[int]]:
    """(assistant header ids, hint message ids) as this tokenizer's chat template renders them."""
    base = [{"role": "user", "content": _PROBE_USER}]
    hinted = [*base, {"role": "user", "content": HINT_TEMPLATE.format(hint=hint)}]
    try:
        plain = _render(tokenizer, base, False)
        with_header = _render(tokenizer, base, True)
        with_hint = _render(tokenizer, hinted, False)
    except Exception as exc:  # templates raise their own errors (e.g. roles must alternate)
        raise TeacherError(f"the chat template cannot render a hint message: {exc}") from exc
    if not (with_header.startswith(plain) and with_hint.startswith(plain)):
        raise TeacherError(
            "the chat template renders earlier messages differently when a "
            "message is added; cannot insert a hint"
        )
    return _encode(tokenizer, with_header[len(plain) :]), _encode(
        tokenizer, with_hint[len(plain) :]
    )


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool) -> str:
    return str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    )
