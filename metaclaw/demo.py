"""`metaclaw demo`: a scripted user teaches a preference through the proxy; the loop learns it.

The user has one preference from `metaclaw.learning.preferences` (by default: every answer
starts with "Sure!"). It asks questions plainly through the proxy; when a reply ignores
the preference it corrects the agent as a person would ("No, you forgot to start with 'Sure!'")
and rates the turn −1 (+1 when it complies) through `POST /v1/feedback`. After each teaching
round the pipeline runs once (ingest → score → diagnose → evolve → train → deploy).

What is measured: held-out questions (never asked while teaching) asked plainly at temperature
0 before the first round and after the last, counted by the preference's rule — whether the
agent adopted the preference without being told again. Every figure printed is measured in this
run: the deploy verdicts come from the `checkpoints` rows the deploy step wrote, the curve from
the ledger (`metaclaw.deploy.curve`), and nothing is promoted unless the gate measured it better.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from metaclaw.learning.preferences import (
    HELD_OUT_QUESTIONS,
    PREFERENCES,
    TEACHING_QUESTIONS,
    Preference,
)


@dataclass
class Round:
    label: str
    replies: list[str] = field(default_factory=list)
    complied: list[bool] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return sum(self.complied) / len(self.complied) if self.complied else 0.0


class ScriptedUser:
    """Talks to the proxy like a person would: one session per question, corrections, ratings.

    `restate`: each conversation opens with the preference (the demo); off, the user asks plainly
    and only rates and corrects, so what is measured is whether the agent adopted the preference
    without being told again (bench/learning.py). `parallel`: that many users at once (the
    policy server batches concurrent requests); each question is its own session either way.
    """

    def __init__(
        self,
        proxy_url: str,
        max_tokens: int,
        temperature: float,
        preference: Preference,
        *,
        restate: bool = True,
        parallel: int = 1,
    ) -> None:
        """`temperature`: the training temperature, so the policy's replies are on-policy data
        (turns sampled at another temperature cannot feed an importance-sampling loss)."""
        self.client = httpx.Client(base_url=proxy_url, timeout=600)
        self.preference = preference
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.restate = restate
        self.parallel = max(1, parallel)

    def _chat(self, session: str, messages: list[dict[str, Any]]) -> tuple[str, str]:
        resp = self.client.post(
            "/v1/chat/completions",
            headers={"x-session-id": session},
            json={
                "model": "metaclaw",
                "messages": messages,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
            },
        )
        resp.raise_for_status()
        return resp.json()["choices"][0]["message"]["content"] or "", resp.headers[
            "x-metaclaw-turn-id"
        ]

    def _converse(self, session: str, question: str, teach: bool) -> tuple[str, bool]:
        opening = self.preference.ask(question) if self.restate else question
        history = [{"role": "user", "content": opening}]
        reply, turn_id = self._chat(session, history)
        ok = self.preference.complies(reply)
        if teach:
            self.client.post(
                "/v1/feedback",
                json={
                    "turn_id": turn_id,
                    "value": 1.0 if ok else -1.0,
                    "comment": "followed my preference" if ok else self.preference.correction,
                },
            )
            if not ok:  # the correction is part of the conversation, as a person would write it
                history += [
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": self.preference.correction},
                ]
                self._chat(session, history)
        return reply, ok

    def ask(self, label: str, questions: tuple[str, ...], *, teach: bool) -> Round:
        from concurrent.futures import ThreadPoolExecutor

        stamp = int(time.time())
        with ThreadPoolExecutor(self.parallel) as pool:
            done = list(
                pool.map(
                    lambda iq: self._converse(f"demo-{label}-{iq[0]}-{stamp}", iq[1], teach),
                    enumerate(questions),
                )
            )
        result = Round(label)
        for reply, ok in done:
            result.replies.append(reply)
            result.complied.append(ok)
        return result


DEMO_ENV = {
    # small enough to finish on two CPU cores, and honest about it
    "METACLAW_JUDGE__VOTES": "1",
    "METACLAW_JUDGE__MAX_TOKENS": "96",
    "METACLAW_CRITIC__MAX_TOKENS": "256",
    "METACLAW_CRITIC__RETRIES": "0",
    "METACLAW_CRITIC__MAX_CALLS_PER_RUN": "4",  # the skills path runs; it does not set the pace
    "METACLAW_JUDGE__SESSION_IDLE_S": "0",
    # the embedded judge is the policy server itself, one reply at a time on two cores: in the
    # last round's gate both policies keep the users' rule, so the judge gets all 24 pairs (48
    # calls); 16 in flight with 60 s each timed out while they queued
    "METACLAW_JUDGE__CONCURRENCY": "4",
    "METACLAW_JUDGE__TIMEOUT_S": "300",
    "METACLAW_DEPLOY__MIN_EVAL_PROMPTS": "4",
    # the gate's yardstick is the fixed prompts file below: holding out a share of the
    # teaching sessions (and, by prompt digest, every repeat of their questions) would only
    # take teaching data away from a run this short
    "METACLAW_DEPLOY__EVAL_FRACTION": "0",
    "METACLAW_DEPLOY__MAX_NEW_TOKENS": "64",
    # what bench/learning.py measured to teach the embedded model an opener in one round
    # (docs/learning.md "Figures"): large steps, a round's turns trained in that round,
    # rule-holding replies from the users' corrections, and a gate that compares the two
    # policies' greedy replies (at T = 1 the 135M model's replies are mostly noise)
    "METACLAW_TRAINING__BATCH_SIZE": "8",
    "METACLAW_TRAINING__LEARNING_RATE": "2e-3",
    "METACLAW_TRAINING__MAX_STEPS_PER_RUN": "3",
    # the learner runs whole rounds of large steps ahead of the served policy; the staleness
    # bound's default (0.05) is sized for the default learning rate, 1e-4
    "METACLAW_TRAINING__MAX_KL": "1.0",
    "METACLAW_TRAINING__MAX_UPDATE_KL": "5",
    "METACLAW_TRAINING__MAX_UNPROMOTED_STEPS": "9",
    "METACLAW_TRAINING__MAX_STALENESS": "8",
    "METACLAW_TRAINING__HINT_ROLLOUTS": "3",
    "METACLAW_DEPLOY__TEMPERATURE": "0",
}
QUESTIONS = TEACHING_QUESTIONS
EVAL_QUESTIONS = HELD_OUT_QUESTIONS


def preference(kind: str) -> Preference:
    try:
        return PREFERENCES[kind]
    except KeyError:
        raise ValueError(
            f"unknown preference {kind!r}; choose one of {', '.join(PREFERENCES)}"
        ) from None


def gate_prompts_jsonl(questions: tuple[str, ...]) -> str:
    """The deploy gate's prompts: the teaching questions asked plainly, as users ask them. Never
    the held-out questions: the gate must not select on the set the result is measured on."""
    import json

    return "".join(
        json.dumps({"messages": [{"role": "user", "content": q}]}) + "\n" for q in questions
    )


def deploy_line(result: Any) -> str:
    """The deploy step's verdict as the pipeline returned it (win rate with its interval)."""
    if not isinstance(result, dict):
        return f"deploy: {result}"
    line = (
        f"deploy: {result.get('status')} {result.get('checkpoint_id') or ''} — "
        f"{result.get('reason')}"
    )
    if result.get("win_rate") is not None:
        line += (
            f" (win rate {result['win_rate']:.2f}, interval [{result['low']:.2f}, "
            f"{result['high']:.2f}] over {result['pairs']} pairs)"
        )
    return line


def outcome_lines(paths: Any, before: Round, after: Round) -> list[str]:
    """What the run measured (held-out compliance), and the ledger's counts."""
    from metaclaw.ledger import query

    counts = ", ".join(
        f"(SELECT count(*) FROM {t})"
        for t in ("turns", "rewards", "feedback", "diagnoses", "skill_events", "train_steps")
    )
    _, rows = query(paths, f"SELECT {counts}")
    turns, rewards, feedback, diagnoses, skill_events, steps = rows[0]
    # the newest verdict, and separately the newest promotion: a candidate superseded before
    # its evaluation is written last and would otherwise read as the run's outcome
    _, latest = query(
        paths,
        "SELECT checkpoint_id, status, reason, eval_metrics FROM checkpoints "
        "ORDER BY ts DESC LIMIT 1",
    )
    _, promoted = query(
        paths,
        "SELECT checkpoint_id FROM checkpoints WHERE status = 'promoted' ORDER BY ts DESC LIMIT 1",
    )
    lines = [
        f"held-out compliance (asked plainly, T = 0): before {before.rate:.0%} "
        f"({sum(before.complied)}/{len(before.complied)}), after {after.rate:.0%} "
        f"({sum(after.complied)}/{len(after.complied)})",
        f"ledger: {turns} turns, {feedback} explicit ratings, {rewards} reward signals, "
        f"{diagnoses} diagnoses, {skill_events} skill events, {steps} train steps",
    ]
    if latest:
        checkpoint, status, reason, _ = latest[0]
        lines.append(f"checkpoint {checkpoint}: {status} — {reason}")
    else:
        lines.append("no checkpoint: training found no full micro-batch with a learning signal")
    lines.append(
        f"newest promotion: {promoted[0][0]}" if promoted else "no promotion: the base model serves"
    )
    return lines
