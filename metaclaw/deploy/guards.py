"""Guards that veto a promotion whatever the judge says, and the gate decision (pure).

Why guards: a judge can be fooled, and some failures are cheap to measure directly —
- **non-finite**: NaN/inf weights, logprobs or training metrics (a diverged update);
- **KL from the base**: mean per-token KL(candidate ‖ base) on the candidate's own samples, the
  distance the policy has drifted (reward hacking and collapse both show up here first);
- **degenerate replies**: empty or looping outputs, beyond an absolute share *and* worse than the
  current policy's share (a weak base model loops too; the candidate must not be worse);
- **length blow-up**: mean reply length far above the current policy's (judges favour length).

KL estimator: with x ~ p_c, per token r = p_b(x)/p_c(x); `k3 = (r − 1) − log r` is unbiased,
non-negative and lower-variance than `k1 = −log r` (Schulman, "Approximating KL divergence").
It is exact in expectation only when the samples come from p_c at temperature 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from metaclaw.config import DeploySettings
from metaclaw.deploy.stats import SignTest, WinRate

LOOP_MIN_TOKENS = 24  # shorter replies are never called loops
LOOP_NGRAM = 4
LOOP_SHARE = 0.5  # one n-gram covering at least half the reply is a loop
MIN_DISTINCT_RATIO = 0.1


def is_degenerate(text: str, tokens: Sequence[int]) -> bool:
    """Empty (or whitespace) replies, and replies dominated by one repeated n-gram."""
    if not text.strip():
        return True
    if len(tokens) < LOOP_MIN_TOKENS:
        return False
    if len(set(tokens)) / len(tokens) < MIN_DISTINCT_RATIO:
        return True
    grams = Counter(tuple(tokens[i : i + LOOP_NGRAM]) for i in range(len(tokens) - LOOP_NGRAM + 1))
    top = grams.most_common(1)[0][1]
    return top * LOOP_NGRAM >= LOOP_SHARE * len(tokens)


@dataclass(frozen=True)
class KL:
    k1: float  # mean per-token log p_c − log p_b
    k3: float  # mean per-token (r − 1) − log r, r = p_b / p_c
    tokens: int


def kl_estimate(
    candidate_logprobs: Iterable[Sequence[float]], base_logprobs: Iterable[Sequence[float]]
) -> KL:
    """Per-token KL(candidate ‖ base) from logprobs of the candidate's samples under both."""
    k1 = k3 = 0.0
    n = 0
    for cand, base in zip(candidate_logprobs, base_logprobs, strict=True):
        if len(cand) != len(base):
            raise ValueError(f"logprob lists differ in length: {len(cand)} vs {len(base)}")
        for lc, lb in zip(cand, base, strict=True):
            log_r = lb - lc
            k1 -= log_r
            k3 += math.expm1(log_r) - log_r if log_r < 700 else math.inf
            n += 1
    if n == 0:
        return KL(0.0, 0.0, 0)
    return KL(k1 / n, k3 / n, n)


def _finite(value: Any) -> bool:
    return not isinstance(value, float) or math.isfinite(value)


@dataclass(frozen=True)
class PolicyStats:
    """What the guards read about one policy's replies on the eval prompts."""

    replies: int
    mean_tokens: float
    degenerate: int
    non_finite_logprobs: int = 0  # replies with a NaN/inf logprob

    @property
    def degenerate_share(self) -> float:
        return self.degenerate / self.replies if self.replies else 0.0


def policy_stats(
    texts: Sequence[str],
    tokens: Sequence[Sequence[int]],
    logprobs: Sequence[Sequence[float]] | None = None,
) -> PolicyStats:
    n = len(texts)
    bad = sum(1 for lps in logprobs or [] if not all(math.isfinite(v) for v in lps))
    return PolicyStats(
        replies=n,
        mean_tokens=sum(len(t) for t in tokens) / n if n else 0.0,
        degenerate=sum(
            1 for text, toks in zip(texts, tokens, strict=True) if is_degenerate(text, toks)
        ),
        non_finite_logprobs=bad,
    )


@dataclass(frozen=True)
class Guard:
    name: str
    tripped: bool
    value: float | None
    limit: float | None
    detail: str


def check_guards(
    cfg: DeploySettings,
    candidate: PolicyStats,
    current: PolicyStats,
    kl: KL | None,
    train_metrics: Mapping[str, Any] | None = None,
) -> list[Guard]:
    """Every guard, tripped or not (all are recorded, so a reader sees the margins)."""
    guards: list[Guard] = []
    bad_metrics = sorted(k for k, v in (train_metrics or {}).items() if not _finite(v))
    non_finite = (
        candidate.non_finite_logprobs > 0
        or bad_metrics
        or (kl is not None and not (math.isfinite(kl.k1) and math.isfinite(kl.k3)))
    )
    detail = []
    if candidate.non_finite_logprobs:
        detail.append(f"{candidate.non_finite_logprobs} replies with NaN/inf logprobs")
    if bad_metrics:
        detail.append(f"non-finite training metrics: {', '.join(bad_metrics)}")
    if kl is not None and not math.isfinite(kl.k3):
        detail.append("non-finite KL")
    guards.append(
        Guard("non_finite", bool(non_finite), None, None, "; ".join(detail) or "all finite")
    )
    if kl is not None:
        guards.append(
            Guard(
                "kl_from_base",
                math.isfinite(kl.k3) and kl.k3 > cfg.max_kl,
                kl.k3 if math.isfinite(kl.k3) else None,
                cfg.max_kl,
                f"KL(candidate‖base) {kl.k3:.4g} nats/token over {kl.tokens} tokens "
                f"(k1 {kl.k1:.4g})",
            )
        )
    share, cur_share = candidate.degenerate_share, current.degenerate_share
    guards.append(
        Guard(
            "degenerate",
            share > cfg.max_degenerate_fraction and share > cur_share,
            share,
            cfg.max_degenerate_fraction,
            f"{candidate.degenerate}/{candidate.replies} empty or looping replies "
            f"(current policy: {current.degenerate}/{current.replies})",
        )
    )
    ratio = candidate.mean_tokens / max(current.mean_tokens, 1.0)
    guards.append(
        Guard(
            "length_blowup",
            ratio > cfg.max_length_ratio,
            ratio,
            cfg.max_length_ratio,
            f"mean reply {candidate.mean_tokens:.1f} tokens vs current {current.mean_tokens:.1f}",
        )
    )
    return guards


@dataclass
class Decision:
    promote: bool
    reason: str
    win: WinRate
    test: SignTest
    guards: list[Guard] = field(default_factory=list)

    @property
    def tripped(self) -> list[Guard]:
        return [g for g in self.guards if g.tripped]

    def as_dict(self) -> dict[str, Any]:
        return {
            "promote": self.promote,
            "reason": self.reason,
            "win": asdict(self.win),
            "test": asdict(self.test),
            "guards": [asdict(g) for g in self.guards],
        }


def decide(win: WinRate, test: SignTest, guards: list[Guard]) -> Decision:
    """Promote only when the sign test is significant at this decision's spent α and no guard
    trips. Ties never count toward a promotion."""
    tripped = [g for g in guards if g.tripped]
    if tripped:
        names = ", ".join(f"{g.name} ({g.detail})" for g in tripped)
        return Decision(False, f"guard tripped: {names}", win, test, guards)
    if win.n == 0:
        return Decision(False, "no pair got a valid verdict from the judge", win, test, guards)
    summary = (
        f"{test.wins} prompts won, {test.losses} lost, {test.ties} tied; sign test "
        f"p={test.p_value:.3g} vs α_{test.k}={test.alpha_k:.3g} (decision {test.k} "
        f"against this policy, α={test.alpha:g}); win rate {win.win_rate:.3f} "
        f"[{win.low:.3f}, {win.high:.3f}]"
    )
    if not test.significant:
        return Decision(False, f"{summary}: not significantly better", win, test, guards)
    return Decision(True, f"{summary}: significantly better", win, test, guards)
