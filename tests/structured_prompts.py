"""A fixed set of judge and critic prompts, as the scorer and the skills flows build them.

Shared by the structured-output benchmark (`bench/structured_output.py`) and the slow test of
constrained decoding on the packaged 135M model, so the figures in docs/serving.md and the
test speak about the same prompts. The critic prompts come from the real prompt builders
(`diagnosis.user_prompt`, `evolution.user_prompt`); the judge prompts follow `build_case`'s
layout under the real rubric.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from metaclaw.scoring.prompt import RUBRIC
from metaclaw.skills import diagnosis, evolution

_JUDGED = [
    ("What is the capital of France?", "The capital of France is Paris.", "thanks!"),
    ("Convert 10 miles to km.", "10 miles is about 16.1 km.", "great, now 20 miles?"),
    ("Write a haiku about rain.", "Rain rain go away.", "no, that's not a haiku"),
    ("How do I list files in Python?", "Use os.listdir(path).", "that works"),
    ("Give me a one-line summary of WW2.", "World War II was a war.", "too short, try again"),
    ("What is 12*12?", "12*12 = 124.", "wrong, it's 144"),
]
_DIAGNOSED = [
    (
        "Answer in metric units: how tall is Everest?",
        "Everest is 29,032 feet tall.",
        "no, I said metric units",
    ),
    ("Always end with 'Cheers'. What is 2+2?", "2+2 is 4.", "you forgot the sign-off"),
    (
        "Summarise this in one sentence: the meeting moved to Friday because the room was booked.",
        "The meeting, which was originally planned, has been moved to a different day of the "
        "week, namely Friday, for the reason that the room had already been booked by others.",
        "too long",
    ),
    (
        "Read config.yaml and tell me the port.",
        "The port is 8080.",
        "that's wrong, you never opened the file",
    ),
]


@dataclass(frozen=True)
class StructuredPrompt:
    """One call: who asks (judge / diagnose / evolve), the messages, and what reads the reply."""

    role: str
    messages: list[dict[str, str]]
    schema: type[BaseModel] | None  # the critic's answer model; None for a judge vote


def judge_prompts() -> list[StructuredPrompt]:
    out = []
    for question, reply, after in _JUDGED:
        user = (
            f"## Conversation so far\n[user] {question}\n\n## Assistant turn under review\n"
            f"[assistant] {reply}\n\n## What happened next\n[user] {after}\n\nWas the "
            "assistant turn under review correct and helpful? End with the two lines "
            "'Score: …' and 'Reason: …'."
        )
        out.append(
            StructuredPrompt(
                "judge",
                [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}],
                None,
            )
        )
    return out


def diagnose_prompts() -> list[StructuredPrompt]:
    out = []
    for i, (question, reply, after) in enumerate(_DIAGNOSED):
        turn = f"t{i}"
        trajectory = (
            f"--- turn 1 (turn_id {turn}) — FAILED (reward -1.00) ---\n[user] "
            f"{question}\n[assistant] {reply}\n\n--- what happened next ---\n"
            f"[user] {after}"
        )
        group = diagnosis.FailureGroup(
            session_id=f"s{i}",
            turn_ids=(turn,),
            rewards={turn: -1.0},
            trajectory=trajectory,
            queries=(question,),
        )
        out.append(
            StructuredPrompt(
                "diagnose",
                _chat(diagnosis.SYSTEM_PROMPT, diagnosis.user_prompt(group)),
                diagnosis.DiagnosisAnswer,
            )
        )
    return out


def evolve_prompts() -> list[StructuredPrompt]:
    pending = [
        evolution.PendingDiagnosis(
            "d0",
            "format_error",
            "The user asked for metric units and the assistant answered in feet.",
            "Everest is 29,032 feet",
            ("t0",),
        ),
        evolution.PendingDiagnosis(
            "d1",
            "ignored_instruction",
            "The user asked every answer to end with 'Cheers' and the reply did not.",
            "2+2 is 4.",
            ("t1",),
        ),
        evolution.PendingDiagnosis(
            "d2",
            "format_error",
            "The user asked for one short sentence and the reply was long and wordy.",
            "too long",
            ("t2",),
        ),
    ]
    return [
        StructuredPrompt(
            "evolve",
            _chat(evolution.SYSTEM_PROMPT, evolution.user_prompt([d], [])),
            evolution.EvolveAnswer,
        )
        for d in pending
    ]


def all_prompts() -> list[StructuredPrompt]:
    return [*judge_prompts(), *diagnose_prompts(), *evolve_prompts()]


def _chat(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def usable(prompt: StructuredPrompt, text: str) -> tuple[bool, str]:
    """(usable, why not): read exactly as the scorer / the skills flows read a reply."""
    from pydantic import ValidationError

    from metaclaw.scoring.votes import parse_vote
    from metaclaw.skills.critic import extract_json

    if prompt.schema is None:
        vote = parse_vote(text)
        return vote.valid, vote.error or ""
    try:
        prompt.schema.model_validate(extract_json(text))
    except (ValueError, ValidationError) as exc:
        return False, " ".join(str(exc).split())[:160]
    return True, ""


def request_kwargs(prompt: StructuredPrompt, constrained: bool) -> dict[str, Any]:
    """The body fields the real caller sends (judge: `Judge._call`; critic: `Critic._complete`)
    with defaults from `Settings`; `constrained=False` is what was sent, or honoured, before."""
    from metaclaw.config import Settings
    from metaclaw.scoring.judge import VOTE_FORMAT
    from metaclaw.serving.constrained import response_format

    settings = Settings()
    if prompt.schema is None:
        kw: dict[str, Any] = {
            "temperature": settings.judge.temperature,
            "max_tokens": settings.judge.max_tokens,
        }
        if constrained:
            kw["response_format"] = VOTE_FORMAT
        return kw
    kw = {"temperature": settings.critic.temperature, "max_tokens": settings.critic.max_tokens}
    if constrained:
        kw["response_format"] = response_format(
            prompt.schema.model_json_schema(), prompt.schema.__name__, kw["max_tokens"]
        )
    return kw
