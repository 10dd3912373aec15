"""Preferences a scripted user teaches, and the rule that decides whether a reply complies.

Why rules and not a judge: the figure that says "the agent got better" must not depend on the
thing being trained against. Each preference's `complies` is a deterministic function of the
reply text, applied identically before and after training and in the control arm, so a change
in compliance is a change in the policy's replies and nothing else.

Why these kinds: SmolLM2-135M-Instruct (the embedded default) almost never follows an
instruction given in context (asked to end with a word: 0/12 greedy), but it sometimes shows
short replies on its own (≤ 15 words: 9/36 greedy, 3/36 at T = 1). A behaviour with a nonzero
base rate can be learned from ratings alone (the RL loss needs some rewarded samples); one the
base never shows needs a teacher that can follow the hint. `base_rate_nonzero` records which
kind is which, so a benchmark reports them separately instead of averaging them away.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*|\d+(?:[.,]\d+)*", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_LIST_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+", re.MULTILINE)
# the most frequent short French function words; English replies contain almost none of them
_FRENCH_WORDS = (
    "le la les un une des du de et est sont pas que qui dans pour sur avec au aux ce "
    "cette il elle nous vous ils elles je tu mais ou donc car très plus c'est n'est"
)
_ENGLISH_WORDS = (
    "the a an and is are not that which in for on with to of it this they we you "
    "he she but or so very more"
)
_FRENCH = frozenset(_FRENCH_WORDS.split())
_ENGLISH = frozenset(_ENGLISH_WORDS.split())


def words(text: str) -> list[str]:
    """Words and numbers as a reader counts them (punctuation and markup are not words)."""
    return _WORD.findall(text or "")


def word_count(text: str) -> int:
    return len(words(text))


def at_most_words(limit: int) -> Callable[[str], bool]:
    def check(reply: str) -> bool:
        n = word_count(reply)
        return 0 < n <= limit

    return check


def ends_with(sign_off: str) -> Callable[[str], bool]:
    """The reply's last words are the sign-off (trailing punctuation and emphasis ignored)."""
    target = [w.lower() for w in words(sign_off)]

    def check(reply: str) -> bool:
        tail = [w.lower() for w in words(reply)][-len(target) :]
        return bool(target) and tail == target and word_count(reply) > len(target)

    return check


def starts_with(opener: str) -> Callable[[str], bool]:
    """The reply's first words are the opener (punctuation and emphasis ignored), and an
    answer follows it."""
    target = [w.lower() for w in words(opener)]

    def check(reply: str) -> bool:
        head = [w.lower() for w in words(reply)][: len(target)]
        return bool(target) and head == target and word_count(reply) > len(target)

    return check


def one_sentence(reply: str) -> bool:
    """A single finished sentence: no list lines, no line breaks inside, exactly one sentence
    end, and it ends the reply (a reply cut off by the token limit is not a sentence: counted
    as one, 11 of 12 greedy replies of the embedded model passed, most of them cut mid-way)."""
    text = (reply or "").strip()
    if not text or _LIST_LINE.search(text) or "\n" in text:
        return False
    ends = list(_SENTENCE_END.finditer(text))
    return len(ends) == 1 and ends[0].end() == len(text)


def in_french(reply: str) -> bool:
    """Mostly French function words among the reply's common function words (≥ 3 seen)."""
    found = [w.lower() for w in words(reply)]
    fr = sum(1 for w in found if w in _FRENCH)
    en = sum(1 for w in found if w in _ENGLISH)
    return fr >= 3 and fr > 2 * en


@dataclass(frozen=True)
class Preference:
    """What a user wants, how they say it, and the rule that decides compliance."""

    kind: str  # a short stable name, used in reports
    instruction: str  # how the user states it at the start of a conversation
    correction: str  # what the user says when a reply ignores it
    complies: Callable[[str], bool]
    base_rate_nonzero: bool  # the embedded base model shows the behaviour by itself sometimes

    def ask(self, question: str) -> str:
        """The first user message of a session: the preference, then the question."""
        return f"{self.instruction}\n\n{question}"


SIGN_OFF = "Cheers!"
OPENER = "Sure!"

PREFERENCES: dict[str, Preference] = {
    p.kind: p
    for p in (
        Preference(
            "brevity",
            "Please keep every answer under 15 words. I read on my phone.",
            "Too long. Keep it under 15 words, please.",
            at_most_words(15),
            True,
        ),
        Preference(
            "terse",
            "Please answer in at most five words. I read on my phone.",
            "Too long. At most five words, please.",
            at_most_words(5),
            True,
        ),
        Preference(
            "one_sentence",
            "Answer in one plain sentence, please: no lists, no line breaks.",
            "Please answer in one sentence only, without a list.",
            one_sentence,
            True,
        ),
        Preference(
            "sign_off",
            f"Please always end every answer with the word '{SIGN_OFF}'. It matters to me.",
            f"No, you forgot to end with '{SIGN_OFF}'. Please always end with it.",
            ends_with(SIGN_OFF),
            False,
        ),
        Preference(
            "opener",
            f"Please always start every answer with '{OPENER}'. It matters to me.",
            f"No, you forgot to start with '{OPENER}'. Please always start with it.",
            starts_with(OPENER),
            False,
        ),
        Preference(
            "french",
            "Réponds toujours en français, s'il te plaît.",
            "Please answer in French, not English.",
            in_french,
            False,
        ),
    )
}

# Short general questions: the first part teaches, the held-out part (never asked while
# teaching) measures; a question appears in one part only.
TEACHING_QUESTIONS: tuple[str, ...] = (
    "What is the capital of France?",
    "Name a primary colour.",
    "How many legs does a spider have?",
    "What is 2 + 2?",
    "What colour is the sky on a clear day?",
    "Name a fruit that is yellow.",
    "What do cows drink?",
    "Which planet is closest to the sun?",
    "What is the boiling point of water in Celsius?",
    "Name a musical instrument with strings.",
    "What is the opposite of hot?",
    "How many hours are in a day?",
    "What animal says meow?",
    "What is frozen water called?",
    "Which season comes after winter?",
    "What do you use to write on paper?",
    "How many wheels does a bicycle have?",
    "What is the largest planet?",
    "Name a vegetable that is orange.",
    "What do plants need to grow?",
    "What is the main language of Brazil?",
    "What gas do humans breathe in?",
    "Which animal is known as the king of the jungle?",
    "What shape has three sides?",
)
HELD_OUT_QUESTIONS: tuple[str, ...] = (
    "What is the largest ocean?",
    "Name a mammal that can fly.",
    "What do bees make?",
    "How many days are in a week?",
    "What is the capital of Italy?",
    "What colour are bananas when ripe?",
    "How many continents are there?",
    "What is the freezing point of water in Celsius?",
    "Name a bird that cannot fly.",
    "What do you call a baby dog?",
    "Which direction does the sun rise?",
    "What is 10 minus 3?",
)
