"""Hints a decoder can enforce: "keep it under 15 words", "one sentence", "end with 'Cheers!'".

Why: hindsight-hint distillation needs a teacher that *follows* the hint. A large model does so in
context; the embedded 135M model almost never does (asked to end with a word: 0/12), so a hinted
copy of it teaches nothing. But many preferences users state are rules about the shape of the
reply, and a shape can be enforced token by token (constrained decoding, `serving/constrained.py`):
the policy itself, held to the rule, writes the reply the user asked for, and the unhinted policy
is trained on it (context distillation, `training/hint_rollouts.py`).

Parsing stays silent when in doubt, like hint extraction: "too long" without a number has no
rule (it is still a hint for a teacher that reads text), and a rule is built only from explicit
phrasing. Pure: text in, rule out.

A rule has three parts because a decoder can enforce a prefix and a body but cannot make a small
model *want* to write a sign-off before it stops: the body is generated under the grammar
(end-of-sequence allowed once it is complete), then the suffix is appended.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# A reply without a shape rule: one paragraph (a line break is where small models start lists),
# short enough to finish within training.hint_rollout_max_tokens (64 tokens ≈ 250 characters):
# with 400 characters, 6-10 of 16 sign-off rollouts of the embedded model ran out unfinished
PARAGRAPH = r"[^\n]{1,200}"
ONE_SENTENCE = r"[^\n.!?]{1,240}[.!?]"
STRICT_WORDS = ("under", "below", "fewer than", "less than")
MAX_WORDS_LIMIT = 200
MAX_WORD_CHARS = 30  # longer than any English word; bounds a word-limited reply's length

_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "thirty": 30,
    "fifty": 50,
}
_COUNT = r"(\d{1,3}|" + "|".join(_NUMBER_WORDS) + r")"
_MAX_WORDS = re.compile(
    r"\b(under|below|at most|no more than|not more than|fewer than|less than|"
    r"max(?:imum)?(?: of)?|within|up to|no longer than)\s+" + _COUNT + r"\s+words?\b",
    re.IGNORECASE,
)
_ONE_SENTENCE = re.compile(
    r"\b(?:in |with |to )?(?:one|a single|1|just one|only one)\s+(?:short |plain |simple )?"
    r"sentences?\b",
    re.IGNORECASE,
)
_QUOTED = r"['\"“‘«]\s*([^'\"”’»\n]{1,40}?)\s*['\"”’»]"
_ENDS_WITH = re.compile(
    r"\b(?:end|finish|close|sign(?:\s+off)?)\b[^'\"“‘«\n]{0,40}?\bwith\b\s*"
    r"(?:the (?:word|words|phrase|line) )?" + _QUOTED,
    re.IGNORECASE,
)
_STARTS_WITH = re.compile(
    r"\b(?:start|begin|open)\b[^'\"“‘«\n]{0,40}?\bwith\b\s*"
    r"(?:the (?:word|words|phrase|line) )?" + _QUOTED,
    re.IGNORECASE,
)


@dataclass(frozen=True)
class HintRule:
    """A reply shape: `prefix` (forced), a body matching the regex `body`, then `suffix`."""

    body: str = PARAGRAPH
    prefix: str = ""
    suffix: str = ""
    max_words: int | None = None  # for reports; the body regex enforces it

    @property
    def grammar_regex(self) -> str:
        """The regex the decoder enforces: the literal prefix, then the body."""
        return re.escape(self.prefix) + self.body

    def describe(self) -> str:
        parts = []
        if self.prefix:
            parts.append(f"starts with {self.prefix!r}")
        if self.max_words is not None:
            parts.append(f"at most {self.max_words} words")
        elif self.body == ONE_SENTENCE:
            parts.append("one sentence")
        if self.suffix:
            parts.append(f"ends with {self.suffix.strip()!r}")
        return ", ".join(parts) or "one paragraph"

    def holds(self, reply: str) -> bool:
        """Whether a reply keeps the parts of the rule the user stated.

        Checked part by part, not with `grammar_regex`: the regex also bounds a generated body's
        length (so a decoder finishes), which is not what the user asked for. Words are compared
        case-blind and without punctuation or markup ("**Cheers!**" ends with "Cheers!"), and a
        stated prefix or suffix needs an answer beside it: "Cheers!" alone is no answer.
        """
        text = (reply or "").strip()
        found = _rule_words(text)
        head, tail = _rule_words(self.prefix), _rule_words(self.suffix)
        if not found or len(found) <= len(head) + len(tail):
            return False
        if head and found[: len(head)] != head:
            return False
        if tail and found[-len(tail) :] != tail:
            return False
        if self.max_words is not None and len(text.split()) > self.max_words:
            return False
        if self.body == ONE_SENTENCE and self.max_words is None:
            body = _strip_literal(text, self.prefix, self.suffix)
            return _SENTENCE.fullmatch(body) is not None
        return True


def words_body(limit: int) -> str:
    """At most `limit` space-separated words on one line, ending a sentence. A word is at most
    `MAX_WORD_CHARS` characters, so the whole reply is bounded and a decoder always finishes."""
    if limit < 1:
        raise ValueError(f"a word limit must be at least 1, got {limit}")
    w = MAX_WORD_CHARS
    return rf"([^\s]{{1,{w}}} ){{0,{limit - 1}}}[^\s]{{0,{w - 1}}}[^\s.!?][.!?]"


_RULE_WORD = re.compile(r"\w+(?:['’]\w+)*")
_SENTENCE = re.compile(r"[^\n.!?]+[.!?]+")  # ONE_SENTENCE without the decoder's length bound


def _rule_words(text: str) -> list[str]:
    return [w.lower() for w in _RULE_WORD.findall(text)]


def _strip_literal(text: str, prefix: str, suffix: str) -> str:
    """The reply without its stated prefix and suffix (compared case-blind), for the body check."""
    prefix, suffix = prefix.strip(), suffix.strip()
    if prefix and text.lower().startswith(prefix.lower()):
        text = text[len(prefix) :]
    if suffix and text.lower().endswith(suffix.lower()):
        text = text[: -len(suffix)]
    return text.strip()


def _count(text: str) -> int:
    return int(text) if text.isdigit() else _NUMBER_WORDS[text.lower()]


def max_words(text: str) -> int | None:
    """The tightest word limit the text states ("under 15 words" → 14), or None."""
    limits = []
    for bound, count in _MAX_WORDS.findall(text):
        n = _count(count) - (1 if bound.lower() in STRICT_WORDS else 0)
        if 1 <= n <= MAX_WORDS_LIMIT:
            limits.append(n)
    return min(limits) if limits else None


def rule_for(hints: Iterable[str]) -> HintRule | None:
    """The reply shape the hints ask for together, or None when none of them states one."""
    limit: int | None = None
    sentence = False
    prefix = suffix = ""
    for text in hints:
        n = max_words(text)
        if n is not None:
            limit = n if limit is None else min(limit, n)
        sentence = sentence or bool(_ONE_SENTENCE.search(text))
        if m := _ENDS_WITH.search(text):
            suffix = m.group(1).strip()
        if m := _STARTS_WITH.search(text):
            prefix = m.group(1).strip()
    if limit is None and not sentence and not prefix and not suffix:
        return None
    body = PARAGRAPH
    if limit is not None:
        # the prefix and the suffix count against the limit too
        room = limit - len(prefix.split()) - len(suffix.split())
        if room < 1:
            return None  # contradictory: nothing fits; stay silent
        body = words_body(room)
    elif sentence:
        body = ONE_SENTENCE
    return HintRule(
        body=body,
        prefix=f"{prefix} " if prefix else "",
        suffix=f" {suffix}" if suffix else "",
        max_words=limit,
    )


def standing_rule(stated: Iterable[tuple[str, str]], min_support: int) -> HintRule | None:
    """The rule users keep stating: the shapes asked for about at least `min_support` turns.

    `stated`: (turn id, hint text) pairs. Why a support threshold: one stray correction ("under
    5 words" said once about one reply) is a remark about that reply, not a standing preference,
    and a rule that decides the deploy gate's pairs must be one users hold. Support counts
    distinct turns, so a correction repeated as a feedback comment on the same turn counts once.
    Each hint is parsed alone and grouped by the shape it states; the shapes that clear the
    threshold combine as in `rule_for` (the tightest word limit), and a contradictory
    combination yields None.
    """
    if min_support < 1:
        raise ValueError(f"min_support must be at least 1, got {min_support}")
    turns: dict[HintRule, set[str]] = {}
    said: dict[HintRule, str] = {}
    for turn_id, text in stated:
        rule = rule_for([text])
        if rule is not None:
            turns.setdefault(rule, set()).add(turn_id)
            said.setdefault(rule, text)
    held = [said[rule] for rule, seen in turns.items() if len(seen) >= min_support]
    return rule_for(held) if held else None
