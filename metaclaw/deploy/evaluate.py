"""Evaluate a candidate against the current policy: sample both, judge pairs, measure, decide.

Steps (each recorded in the result, so a reader can audit a verdict):
1. render every eval prompt with the policy's chat template, exactly as the policy server does;
2. sample the candidate (same seed per prompt for both policies) and score its replies under
   itself and under the base model (the KL guard);
3. sample the current policy (the promoted checkpoint, or the base model when none is) — its
   replies come from the reply cache when an earlier decision drew them already;
4. judge each pair in both orders (identical replies are a tie without asking);
5. per-prompt outcomes → the sign test at this decision's spent α (`stats.sign_test`; the
   decision's index k against this policy comes from the registry), win rate + Wilson interval
   for the report, guards, decision (`guards.decide`).

Nothing here writes to the ledger: `deployer.py` records the decision.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tinker import types

from metaclaw.config import DeploySettings
from metaclaw.deploy.evalset import EvalPrompt, EvalSet
from metaclaw.deploy.guards import (
    KL,
    Decision,
    Guard,
    PolicyStats,
    check_guards,
    decide,
    kl_estimate,
    policy_stats,
)
from metaclaw.deploy.pairwise import PROMPT_VERSION, PairwiseJudge, render_conversation
from metaclaw.deploy.replycache import ReplyCache
from metaclaw.deploy.sampling import BASE, PolicyRef, Reply, Sampler, prompt_seed
from metaclaw.deploy.stats import (
    SignTest,
    Verdict,
    WinRate,
    pair_score,
    prompt_outcome,
    sign_test,
    win_rate,
)

PREVIEW_CHARS = 500
SAMPLE_BATCH = 16  # prompts per sampler call (and per progress tick)
Progress = Callable[[str, int, int], None]  # (phase, done, total)
CacheFor = Callable[[PolicyRef], ReplyCache]


class CandidateBrokenError(RuntimeError):
    """The candidate could not be sampled or scored at all (e.g. NaN weights)."""


@dataclass
class Pair:
    prompt_id: str
    source: str
    preview: str
    index: int
    candidate: Reply
    current: Reply
    first: Verdict | None = None  # candidate shown as A
    second: Verdict | None = None  # candidate shown as B
    identical: bool = False

    @property
    def score(self) -> float | None:
        return 0.5 if self.identical else pair_score(self.first, self.second)

    def record(self) -> dict[str, Any]:
        return {
            "prompt_id": self.prompt_id,
            "source": self.source,
            "prompt": self.preview,
            "sample": self.index,
            "candidate": self.candidate.text[:PREVIEW_CHARS],
            "current": self.current.text[:PREVIEW_CHARS],
            "candidate_tokens": len(self.candidate.tokens),
            "current_tokens": len(self.current.tokens),
            "candidate_as_A": self.first,
            "candidate_as_B": self.second,
            "identical": self.identical,
            "score": self.score,
        }


@dataclass
class Evaluation:
    candidate: PolicyRef
    baseline: PolicyRef
    eval_split: str
    pairs: list[Pair]
    candidate_stats: PolicyStats
    current_stats: PolicyStats
    kl: KL | None
    win: WinRate
    decision: Decision
    judge_model: str
    judge_calls: int
    invalid_verdicts: int
    prompts_used: int
    current_cached: int = 0  # prompts whose current-policy replies came from the reply cache
    stated_rule: str | None = None  # the users' rule that decided pairs first (described)
    rule_decided: int = 0
    reward_model: str | None = None  # the reward model version that decided pairs it was sure of
    model_decided: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    turn_ids: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def guards(self) -> list[Guard]:
        return self.decision.guards

    @property
    def test(self) -> SignTest:
        return self.decision.test

    def metrics(self) -> dict[str, Any]:
        """The full comparison, as recorded in `checkpoints.eval_metrics`."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, list):
                return [clean(v) for v in value]
            return value

        return clean(
            {
                "candidate": self.candidate.label,
                "baseline": self.baseline.label,
                "decision": "promote" if self.decision.promote else "reject",
                "reason": self.decision.reason,
                "win": asdict(self.win),
                "test": {
                    **asdict(self.test),
                    "decided": self.test.decided,
                    "significant": self.test.significant,
                },
                "guards": [asdict(g) for g in self.guards],
                "kl": asdict(self.kl) if self.kl else None,
                "candidate_stats": asdict(self.candidate_stats),
                "current_stats": asdict(self.current_stats),
                "judge": {
                    "model": self.judge_model,
                    "prompt_version": PROMPT_VERSION,
                    "calls": self.judge_calls,
                    "invalid_verdicts": self.invalid_verdicts,
                    "stated_rule": self.stated_rule,
                    "rule_decided": self.rule_decided,
                    "reward_model": self.reward_model,
                    "model_decided": self.model_decided,
                },
                "eval_set": {
                    "split": self.eval_split,
                    "prompts": self.prompts_used,
                    "current_cached": self.current_cached,
                    "skipped": self.skipped,
                    "turn_ids": self.turn_ids,
                },
                "seconds": self.seconds,
                "notes": self.notes,
                "pairs": [p.record() for p in self.pairs],
            }
        )


def encode_prompts(
    tokenizer: Any, prompts: list[EvalPrompt], max_tokens: int, skipped: dict[str, int]
) -> list[tuple[EvalPrompt, list[int]]]:
    from metaclaw.serving.chat import ChatFormatError, render_prompt

    out = []
    for prompt in prompts:
        try:
            text = render_prompt(tokenizer, prompt.messages, prompt.tools)
        except (ChatFormatError, ValueError, TypeError):
            skipped["unrenderable"] = skipped.get("unrenderable", 0) + 1
            continue
        ids = [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
        if len(ids) > max_tokens:
            skipped["prompt_too_long"] = skipped.get("prompt_too_long", 0) + 1
            continue
        out.append((prompt, ids))
    return out


def _params(cfg: DeploySettings, prompt_id: str) -> types.SamplingParams:
    return types.SamplingParams(
        max_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=prompt_seed(cfg.seed, prompt_id),
    )


def _sample_all(
    sampler: Sampler,
    policy: PolicyRef,
    encoded: list[tuple[EvalPrompt, list[int]]],
    cfg: DeploySettings,
    progress: Progress | None,
    phase: str,
    cache: ReplyCache | None = None,
) -> tuple[list[list[Reply]], int]:
    """Replies per prompt — from the cache where it has them, the rest sampled in batches —
    and how many prompts the cache answered."""
    requests = [
        (ids, cfg.samples_per_prompt, _params(cfg, prompt.prompt_id)) for prompt, ids in encoded
    ]
    keys = [ReplyCache.key(*r) for r in requests]
    out: list[list[Reply] | None] = [cache.get(k) if cache else None for k in keys]
    todo = [i for i, found in enumerate(out) if found is None]
    done = len(requests) - len(todo)
    for start in range(0, len(todo), SAMPLE_BATCH):
        chunk = todo[start : start + SAMPLE_BATCH]
        for i, replies in zip(
            chunk, sampler.sample_many(policy, [requests[i] for i in chunk]), strict=True
        ):
            out[i] = replies
            if cache is not None:
                cache.put(keys[i], replies)
        done += len(chunk)
        if progress:
            progress(phase, done, len(requests))
    if cache is not None:
        cache.save()
    return [replies for replies in out if replies is not None], len(requests) - len(todo)


async def _judge_all(
    judge: PairwiseJudge,
    pairs: list[Pair],
    prompts: dict[str, EvalPrompt],
    progress: Progress | None,
) -> None:
    todo = [p for p in pairs if not p.identical]
    done = 0
    conversations = {pid: render_conversation(p.messages) for pid, p in prompts.items()}

    async def one(pair: Pair) -> None:
        nonlocal done
        pair.first, pair.second = await judge.both_orders(
            conversations[pair.prompt_id],
            pair.candidate.text,
            pair.current.text,
            prompts[pair.prompt_id].messages,
        )
        done += 1
        if progress:
            progress("judging", done, len(todo))

    try:
        await asyncio.gather(*(one(p) for p in todo))
    finally:
        await judge.close()


def evaluate(
    cfg: DeploySettings,
    sampler: Sampler,
    judge: PairwiseJudge,
    candidate: PolicyRef,
    baseline: PolicyRef,
    eval_set: EvalSet,
    *,
    train_metrics: dict[str, Any] | None = None,
    prior_decisions: Mapping[str, int] | None = None,
    cache_for: CacheFor | None = None,
    progress: Progress | None = None,
) -> Evaluation:
    """Run the comparison and decide. Raises `CandidateBrokenError` if the candidate cannot run.

    `prior_decisions`: how many decisions were already made against each current policy (by
    label): this one is number k = that + 1 and spends α_k. `cache_for`: the reply cache of a
    current policy (None: sample it every time)."""
    seconds: dict[str, float] = {}
    started = time.monotonic()
    skipped = dict(eval_set.skipped)
    encoded = encode_prompts(sampler.tokenizer(), eval_set.prompts, cfg.max_prompt_tokens, skipped)
    t = time.monotonic()
    try:
        cand, _ = _sample_all(sampler, candidate, encoded, cfg, progress, "sampling candidate")
        pairs_ids = [
            (ids, r.tokens)
            for (_, ids), replies in zip(encoded, cand, strict=True)
            for r in replies
        ]
        cand_lp = sampler.logprobs(candidate, pairs_ids)
    except (RuntimeError, ValueError) as exc:
        raise CandidateBrokenError(
            f"candidate {candidate.label} could not be sampled: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from exc
    seconds["candidate"] = time.monotonic() - t
    t = time.monotonic()
    notes: list[str] = []
    try:
        current, cached = _sample_all(
            sampler,
            baseline,
            encoded,
            cfg,
            progress,
            f"sampling {baseline.label}",
            cache_for(baseline) if cache_for else None,
        )
    except (RuntimeError, ValueError) as exc:
        if baseline == BASE:
            raise
        # e.g. the promoted adapter no longer fits the configured LoRA rank: measure against
        # the base model rather than never deciding again (recorded in the notes)
        notes.append(
            f"the promoted checkpoint {baseline.label} could not be sampled "
            f"({type(exc).__name__}: {str(exc)[:200]}): compared with the base model"
        )
        baseline = BASE
        current, cached = _sample_all(
            sampler,
            baseline,
            encoded,
            cfg,
            progress,
            "sampling base",
            cache_for(baseline) if cache_for else None,
        )
    seconds["current"] = time.monotonic() - t
    t = time.monotonic()
    base_lp = sampler.logprobs(BASE, pairs_ids)
    kl = kl_estimate(cand_lp, base_lp) if pairs_ids else None
    seconds["kl"] = time.monotonic() - t

    pairs: list[Pair] = []
    prompts: dict[str, EvalPrompt] = {}
    for (prompt, _), c_replies, u_replies in zip(encoded, cand, current, strict=True):
        prompts[prompt.prompt_id] = prompt
        for i, (c, u) in enumerate(zip(c_replies, u_replies, strict=True)):
            pairs.append(
                Pair(
                    prompt.prompt_id,
                    prompt.source,
                    prompt.preview,
                    i,
                    c,
                    u,
                    identical=c.tokens == u.tokens,
                )
            )
    t = time.monotonic()
    asyncio.run(_judge_all(judge, pairs, prompts, progress))
    seconds["judge"] = time.monotonic() - t

    cand_replies = [p.candidate for p in pairs]
    cur_replies = [p.current for p in pairs]
    c_stats = policy_stats(
        [r.text for r in cand_replies], [r.tokens for r in cand_replies], cand_lp
    )
    u_stats = policy_stats([r.text for r in cur_replies], [r.tokens for r in cur_replies])
    win = win_rate([p.score for p in pairs], cfg.confidence)
    by_prompt: dict[str, list[float | None]] = defaultdict(list)
    for pair in pairs:
        by_prompt[pair.prompt_id].append(pair.score)
    k = (prior_decisions or {}).get(baseline.label, 0) + 1
    test = sign_test(
        [prompt_outcome(scores) for scores in by_prompt.values()],
        p0=cfg.min_win_rate,
        alpha=cfg.alpha,
        k=k,
    )
    numeric = {n: v for n, v in (train_metrics or {}).items() if isinstance(v, int | float)}
    guards = check_guards(cfg, c_stats, u_stats, kl, numeric)
    decision = decide(win, test, guards)
    seconds["total"] = time.monotonic() - started
    return Evaluation(
        candidate=candidate,
        baseline=baseline,
        eval_split=eval_set.split,
        pairs=pairs,
        candidate_stats=c_stats,
        current_stats=u_stats,
        kl=kl,
        win=win,
        decision=decision,
        judge_model=judge.model,
        judge_calls=judge.stats.calls,
        invalid_verdicts=judge.stats.invalid,
        prompts_used=len(encoded),
        current_cached=cached,
        stated_rule=judge.rule.describe() if judge.rule else None,
        rule_decided=judge.stats.rule_decided,
        reward_model=judge.decider.version if judge.decider else None,
        model_decided=judge.stats.model_decided,
        skipped=skipped,
        turn_ids=[p.prompt_id for p, _ in encoded if p.source == "ledger"],
        seconds=seconds,
        notes=notes,
    )
