"""The reward-model benchmark's conversations, their human labels, and a noisy judge that reads
them (bench/reward_model.py).

Why synthetic: the benchmark needs the truth for every turn (what a user would say of it) to
measure agreement with human labels, and a judge whose errors are like a real one's (it reads
the question and the reply and is sometimes wrong) without a hosted model. Each session asks
one to three questions; each reply is right, wrong, off-topic or a non-answer; the user's next
message sometimes says so (thanks / a correction) and sometimes just asks the next question.
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import dataclass
from typing import Any

TOPICS: list[tuple[list[str], list[str], str]] = [
    # (questions, right answers, a wrong answer)
    (
        ["How do I reverse a list in Python?", "What's the way to flip a Python list?"],
        [
            "Use slicing, items[::-1], or items.reverse() to reverse in place.",
            "Call reversed(items) for an iterator, or items[::-1] for a reversed copy.",
        ],
        "Use items.sort(reverse=False); that reverses the list.",
    ),
    (
        ["What is the capital of Australia?", "Which city is Australia's capital?"],
        ["Canberra is the capital of Australia.", "Australia's capital is Canberra."],
        "The capital of Australia is Sydney.",
    ),
    (
        ["How long should I boil an egg for a soft yolk?", "Soft-boiled egg: how many minutes?"],
        [
            "About six minutes in boiling water gives a soft, runny yolk.",
            "Six to seven minutes, then cool it in cold water.",
        ],
        "Boil it for twenty minutes for a soft yolk.",
    ),
    (
        ["What does HTTP status 404 mean?", "I got a 404 error, what is that?"],
        [
            "404 means Not Found: the server has no resource at that URL.",
            "It is the Not Found status: the page or resource does not exist on the server.",
        ],
        "404 means the server crashed with an internal error.",
    ),
    (
        [
            "How do I undo my last git commit but keep the changes?",
            "Undo a git commit, keep files?",
        ],
        [
            "Run git reset --soft HEAD~1: the commit is gone and the changes stay staged.",
            "git reset --soft HEAD~1 keeps your work and removes the last commit.",
        ],
        "Run git push --force to undo the last commit.",
    ),
    (
        ["Which planet is closest to the sun?", "What's the innermost planet?"],
        ["Mercury is the planet closest to the sun.", "The innermost planet is Mercury."],
        "Venus is the closest planet to the sun.",
    ),
    (
        ["How do I convert Celsius to Fahrenheit?", "Formula for C to F?"],
        ["Multiply by 9/5 and add 32: 20 °C is 68 °F.", "F = C × 1.8 + 32."],
        "Add 100 and divide by 2 to get Fahrenheit.",
    ),
    (
        ["How many bytes are in a kilobyte?", "A kilobyte is how many bytes?"],
        [
            "1,000 bytes in SI units, or 1,024 in the binary convention (a kibibyte).",
            "Either 1,000 (SI) or 1,024 bytes (binary), depending on convention.",
        ],
        "A kilobyte is 100 bytes.",
    ),
    (
        ["What time zone is Tokyo in?", "Which time zone does Tokyo use?"],
        ["Japan Standard Time, UTC+9, with no daylight saving.", "Tokyo is on JST, UTC+9."],
        "Tokyo uses UTC-5, Eastern Time.",
    ),
    (
        ["How do I center a div with CSS?", "Centering a div horizontally and vertically?"],
        [
            "Give the parent display: flex; justify-content: center; align-items: center.",
            "Use a flex or grid parent: display: grid; place-items: center.",
        ],
        "Set float: center on the div.",
    ),
    (
        [
            "What is the boiling point of water at sea level?",
            "At what temperature does water boil?",
        ],
        ["100 °C (212 °F) at sea level.", "Water boils at 100 degrees Celsius at sea level."],
        "Water boils at 50 °C at sea level.",
    ),
    (
        ["How do I list files in a directory in Linux?", "Show the files in a folder on Linux?"],
        [
            "Use ls, or ls -la to include hidden files with details.",
            "Run ls -l in the directory; add -a for hidden files.",
        ],
        "Use the cd command to list the files.",
    ),
    (
        ["Who wrote Pride and Prejudice?", "Pride and Prejudice author?"],
        ["Jane Austen wrote Pride and Prejudice, published in 1813.", "It is by Jane Austen."],
        "Pride and Prejudice was written by Charles Dickens.",
    ),
    (
        ["How do I read a JSON file in Python?", "Load JSON from a file in Python?"],
        ["with open(path) as f: data = json.load(f)", "Use json.load on the open file object."],
        "Use json.dumps(path) to read the file.",
    ),
    (
        ["What is the square root of 144?", "sqrt(144)?"],
        ["The square root of 144 is 12.", "It is 12, since 12 × 12 = 144."],
        "The square root of 144 is 14.",
    ),
    (
        ["How do I make a SQL query return unique rows?", "Remove duplicate rows in a SQL select?"],
        [
            "Use SELECT DISTINCT col1, col2 FROM t.",
            "Add DISTINCT after SELECT, or GROUP BY the columns.",
        ],
        "Use SELECT UNIQUE ALL * to remove duplicates.",
    ),
]
VAGUE = [
    "I'm not sure about that one.",
    "That depends on many things; you could search online.",
    "Sorry, I can't help with that right now.",
    "Hmm, hard to say. Maybe check the documentation.",
]
THANKS = [
    "Thanks, that worked!",
    "Great, that's what I needed.",
    "Perfect, thank you.",
    "Nice, that did it.",
    "Awesome, thanks a lot.",
]
CORRECTIONS = [
    "No, that's wrong.",
    "That didn't work.",
    "That's not right at all.",
    "No, that's not what I asked.",
    "That is incorrect.",
]


@dataclass(frozen=True)
class Turn:
    row: dict[str, Any]
    good: bool  # what the user thinks of the reply: the human label


def _reply(rng: random.Random, topic: int, good: bool) -> str:
    _, right, wrong = TOPICS[topic]
    if good:
        return rng.choice(right)
    kind = rng.random()
    if kind < 0.4:
        return wrong
    if kind < 0.7:
        other = (topic + rng.randrange(1, len(TOPICS))) % len(TOPICS)
        return rng.choice(TOPICS[other][1])
    return rng.choice(VAGUE)


def sessions(prefix: str, n_turns: int, seed: int, t0_us: int) -> list[Turn]:
    """About `n_turns` turns in sessions of 1–3; the user's next message reacts to the previous
    reply 60 % of the time (thanks or a correction), else just asks the next question."""
    rng = random.Random(seed)
    out: list[Turn] = []
    s = 0
    while len(out) < n_turns:
        sid = f"{prefix}{s}"
        s += 1
        history: list[dict[str, Any]] = []
        reaction = ""
        for i in range(rng.randint(1, 3)):
            topic = rng.randrange(len(TOPICS))
            question = rng.choice(TOPICS[topic][0])
            history.append({"role": "user", "content": f"{reaction} {question}".strip()})
            good = rng.random() < 0.5
            reply = _reply(rng, topic, good)
            ts = t0_us + (len(out) * 2) * 1_000_000
            out.append(
                Turn(
                    {
                        "turn_id": f"{sid}-{i}",
                        "session_id": sid,
                        "turn_index": i,
                        "ts_start": ts,
                        "ts_end": ts + 500_000,
                        "request": {"model": "m", "messages": list(history)},
                        "completion_text": reply,
                        "status": "ok",
                        "finish_reason": "stop",
                    },
                    good,
                )
            )
            history.append({"role": "assistant", "content": reply})
            reaction = rng.choice(THANKS if good else CORRECTIONS) if rng.random() < 0.6 else ""
    return out


_ALL_QUESTIONS = {q: k for k, (qs, _, _) in enumerate(TOPICS) for q in qs}


def truth_of(prompt: str) -> bool | None:
    """What the user would say of the turn under review in a judge prompt (None if unreadable):
    the reply is one of the right answers to the last question asked."""
    convo, _, rest = prompt.partition("## Assistant turn under review")
    reply = rest.partition("## What happened next")[0].strip().removeprefix("[assistant]").strip()
    last_user = convo.rsplit("[user]", 1)[-1]
    topic = next((k for q, k in _ALL_QUESTIONS.items() if q in last_user), None)
    if topic is None or not reply:
        return None
    return reply in TOPICS[topic][1]


class NoisyJudge:
    """The judge's answer to a scoring prompt: the truth, each vote wrong with probability
    `error` (seeded by the prompt and the vote's number, so two runs on the same turns get the
    same votes)."""

    def __init__(self, error: float) -> None:
        self.error = error
        self.seen: dict[str, int] = {}
        self._lock = threading.Lock()  # the server answers votes on threads

    def __call__(self, prompt: str) -> str:
        key = hashlib.blake2b(prompt.encode(), digest_size=8).hexdigest()
        with self._lock:
            n = self.seen[key] = self.seen.get(key, -1) + 1
        truth = truth_of(prompt)
        rng = random.Random(f"{key}:{n}")
        good = rng.random() < 0.5 if truth is None else truth != (rng.random() < self.error)
        return f"Score: {'+1' if good else '-1'}\nReason: stand-in judge"
