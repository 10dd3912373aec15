"""One training step from the ledger: eligible turns → micro-batch → LoRA update → candidate.

The order of writes is what makes a crash harmless:
1. the batch is chosen from turns no earlier `train_steps` row names;
2. forward_backward, guarded: a non-finite loss or a sampler→learner KL above `training.max_kl`
   (the turns were not sampled from this learner's lineage) fails the step *before* optim_step;
3. optim_step, then the same guard on the batch under the updated weights (a NaN or a
   diverging update fails the step *before* anything is saved), then the checkpoint (weights +
   optimizer) is saved at a durable path;
4. the `train_steps` row, then the `checkpoints` candidate row, are appended to the WAL.

A crash before 4 leaves the turns unconsumed and the last good state untouched: the next run
resumes from that state and, given the same turns, derives the same step id and checkpoint id.
A crash between the two appends is repaired on the next run (the candidate row is re-derived).
A failed step is recorded with its turns (quarantined, so one poisoned batch cannot wedge
training) and the in-memory learner is reloaded from the last good state. Nothing is promoted
here: the deploy flow decides — and the learner follows its decisions: every step resumes from
the state `metaclaw.training.lineage.resume_point` derives from the checkpoint registry (the
promoted checkpoint after a rollback, a guard rejection or N unpromoted steps; a stall is
recorded as a `train_steps` row with `metrics.status = "stalled"` and takes no turns).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from tinker import types

from metaclaw.config import Settings
from metaclaw.config_tools import config_snapshot
from metaclaw.deploy.split import held_out_sql
from metaclaw.endpoints import local_policy_endpoint
from metaclaw.ledger import append_rows, connect
from metaclaw.ledger.records import now_micros
from metaclaw.scoring.hint_rules import rule_for
from metaclaw.scoring.hint_store import load_hints
from metaclaw.scoring.hints import Hint
from metaclaw.training.backend import TrainingBackend, learner_logprobs, loss_of
from metaclaw.training.datums import completion_span
from metaclaw.training.hint_rollouts import HintRolloutClient, RolloutRequest
from metaclaw.training.hint_teacher import HintTeachers
from metaclaw.training.history import (
    TrainHistory,
    current_skill_set_version,
    read_candidates,
    read_history,
)
from metaclaw.training.lineage import Resume, read_registry, resume_point
from metaclaw.training.losses import distillation_advantages, sampler_learner_kl
from metaclaw.training.render import render_turn, served_request
from metaclaw.training.samples import (
    Sample,
    SelectionPolicy,
    Turn,
    pack_batch,
    select_samples,
)
from metaclaw.training.teacher import BackendTeacher, Teacher

log = logging.getLogger(__name__)

SECRET_KEYS = {"teacher_api_key", "tinker_api_key"}


@dataclass
class StepOutcome:
    status: Literal["trained", "failed", "idle", "stalled"]
    reason: str = ""
    step: int | None = None
    step_id: str | None = None
    checkpoint_id: str | None = None
    path: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    candidates: int = 0


def stable_id(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def checkpoint_event_id(checkpoint_id: str, status: str) -> str:
    return stable_id("checkpoint", checkpoint_id, status)


def effective_config(settings: Settings, backend: TrainingBackend) -> dict[str, Any]:
    cfg = settings.training.model_dump(mode="json", exclude=SECRET_KEYS)
    cfg["backend_impl"] = backend.name
    return cfg


class Trainer:
    """Holds one backend across the steps of a run; every decision is re-read from the ledger."""

    def __init__(
        self,
        settings: Settings,
        backend_factory: Callable[[Settings], TrainingBackend] | None = None,
        teacher: Teacher | None = None,
    ) -> None:
        from metaclaw.training.factory import make_backend

        self.settings = settings
        self.cfg = settings.training
        self.paths = settings.paths
        self._factory = backend_factory or make_backend
        self._backend: TrainingBackend | None = None
        self._loaded: str | None = None  # state path the backend holds; "" = fresh base model
        self._teacher = teacher
        self._rollout_client: HintRolloutClient | None = None
        self._routed: dict[str, int] = {}

    # -- backend lifecycle ----------------------------------------------------------------
    def backend(self, resume: Resume) -> TrainingBackend:
        """The learner at the resume state (a fresh LoRA for the base model)."""
        want = resume.state_path or ""
        if self._backend is not None and self._loaded == want:
            return self._backend
        if self._backend is not None and not want:
            self._backend.close()  # cannot "unload" an update: start from the base again
            self._backend = None
        if self._backend is None:
            self._backend = self._factory(self.settings)
        if want:
            log.info("resuming from %s (%s: %s)", want, resume.rule, resume.reason)
            self._backend.load_state(want)
        self._loaded = want
        return self._backend

    def teacher(self, backend: TrainingBackend) -> Teacher:
        if self._teacher is None:
            from metaclaw.training.factory import make_teacher

            self._teacher = make_teacher(self.settings, backend)
        return self._teacher

    def _has_plain_teacher(self) -> bool:
        """A teacher for turns without hints: injected, or configured (training.teacher_*)."""
        return self._teacher is not None or bool(
            self.cfg.teacher_base_url or self.cfg.teacher_model
        )

    def _distill(
        self,
        backend: TrainingBackend,
        rl: list[Sample],
        hints: dict[str, list[Hint]],
        used: dict[str, list[str]],
    ) -> None:
        """Per-token advantages from the teacher: a turn the user corrected or commented on is
        scored by the hinted teacher (the configured teacher, else the policy itself, with the
        user's hint in context: hindsight-hint distillation); the rest by the plain teacher."""
        plain = self.teacher(backend) if self._has_plain_teacher() else None
        hinted = HintTeachers(
            plain or BackendTeacher(backend),
            backend.get_tokenizer(),
            {turn: [h.text for h in found] for turn, found in hints.items()},
        )
        for s in rl:
            teacher: Teacher | None = hinted.for_turn(s.turn_id)
            method = "hint_distillation"
            if teacher is None:
                teacher, method = plain, "distillation"
            if teacher is None:  # filtered out in step(); a programming error if reached
                raise RuntimeError(f"no teacher for turn {s.turn_id}")
            t_lp = teacher.completion_logprobs(s.prompt, s.completion)
            s.token_advantages = distillation_advantages(
                t_lp, s.sampler_logprobs or [], self.cfg.kl_coef
            )
            s.advantage = sum(s.token_advantages) / len(s.token_advantages)
            s.advantage_method = method
            if method == "hint_distillation":
                used[s.turn_id] = [h.hint_id for h in hints[s.turn_id]]

    def _rule_rollouts(
        self,
        backend: TrainingBackend,
        batch: list[Sample],
        hints: dict[str, list[Hint]],
        used: dict[str, list[str]],
    ) -> tuple[list[Sample], dict[str, Any]]:
        """Context distillation: for each turn of the batch whose hints state a reply shape,
        replies the serving policy wrote held to that shape (hint_rollouts.py), as SFT samples
        on the turn's own prompt."""
        if not self.cfg.hint_rollouts or not hints:
            return [], {}
        requests = []
        for s in batch:
            rule = rule_for(h.text for h in hints.get(s.turn_id, []))
            if rule is not None and s.prompt:
                requests.append(RolloutRequest(s.turn_id, s.prompt, rule))
        if not requests:
            return [], {}
        if self._rollout_client is None:
            endpoint = local_policy_endpoint(self.settings, "hint_teacher")
            self._rollout_client = HintRolloutClient(
                endpoint.base_url,
                endpoint.model or "",
                backend.get_tokenizer(),
                api_key=endpoint.api_key.get_secret_value() if endpoint.api_key else None,
            )
        rollouts, skipped = self._rollout_client.rollouts(
            requests,
            samples=self.cfg.hint_rollouts,
            temperature=self.cfg.hint_rollout_temperature,
            max_tokens=self.cfg.hint_rollout_max_tokens,
        )
        samples = []
        for r in rollouts:
            if len(r.prompt) + len(r.completion) > self.cfg.max_seq_len:
                skipped["too_long"] += 1
                continue
            samples.append(
                Sample(r.turn_id, "sft", r.prompt, r.completion, advantage_method="hint_rollout")
            )
        for req in requests:
            used.setdefault(req.turn_id, [h.hint_id for h in hints[req.turn_id]])
        return samples, {
            "turns": len(requests),
            "samples": len(samples),
            "skipped": dict(skipped),
            "rules": dict(Counter(req.rule.describe() for req in requests)),
        }

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    # -- one step -------------------------------------------------------------------------
    def step(self) -> StepOutcome:
        started = time.monotonic()
        con = connect(self.paths)
        try:
            history = read_history(con)
            rows = read_candidates(
                con,
                distill=self.cfg.loss_fn == "distillation",
                held_out_sql=held_out_sql(self.settings, "t"),
            )
            current = current_skill_set_version(con)
            registry = read_registry(con)
            hints = (
                load_hints(con, [r["turn_id"] for r in rows if not r["held_out"]])
                if self.cfg.loss_fn == "distillation" or self.cfg.hint_rollouts
                else {}
            )
        finally:
            con.close()
        self._repair(history)
        cfg = self.cfg
        resume = resume_point(
            history.steps,
            registry,
            max_unpromoted=cfg.max_unpromoted_steps,
            stall_after_failures=cfg.stall_after_failures,
            stall_after_rejections=cfg.stall_after_rejections,
            config_sha=config_snapshot(self.settings)["sha256"],
        )
        if resume.stalled:
            return self._stall(history, resume, started)
        held_out = sum(1 for r in rows if r["held_out"])  # the deploy gate's evaluation turns
        turns = [Turn.from_row(r) for r in rows if not r["held_out"]]
        no_hint = 0
        if cfg.loss_fn == "distillation" and not self._has_plain_teacher():
            # hint-only distillation: a turn nobody commented on has no teacher; leave it
            no_hint = sum(1 for t in turns if t.turn_id not in hints)
            turns = [t for t in turns if t.turn_id in hints]
        rule_turns = (
            frozenset(t for t, found in hints.items() if rule_for(h.text for h in found))
            if cfg.hint_rollouts
            else frozenset()
        )
        policy = SelectionPolicy(
            keep_turns=rule_turns,
            loss_fn=self.cfg.loss_fn,
            min_reward_for_sft=self.cfg.min_reward_for_sft,
            current_skill_set_version=current,
            baseline=history.baseline(cfg.baseline_decay),
            max_seq_len=self.cfg.max_seq_len,
            lineage=resume.lineage,
            max_staleness=cfg.max_staleness,
        )
        # Decide "not enough yet" before paying for a backend (a model load, a Tinker session):
        # routing needs no tokenizer, and an optimistic renderer counts every off-policy turn.
        rough = select_samples(turns, policy, lambda _turn: ([0], [0], 0))
        if held_out:
            rough.skipped["held_out_for_eval"] = held_out
        if no_hint:
            rough.skipped["no_hint"] = no_hint
        if pack_batch(rough.samples, self.cfg.batch_size) is None:
            return StepOutcome(
                "idle",
                f"{len(rough.samples)} usable samples < batch_size {self.cfg.batch_size}",
                skipped=dict(rough.skipped),
                candidates=len(turns),
            )
        backend = self.backend(resume)
        tokenizer = backend.get_tokenizer()

        def render(turn: Turn) -> tuple[list[int], list[int], int]:
            request = served_request(
                turn.request or {}, turn.injected_text, anthropic=turn.client == "anthropic"
            )
            return render_turn(
                tokenizer, request, turn.completion_text, turn.tool_calls, self.cfg.max_seq_len
            )

        selection = select_samples(turns, policy, render)
        if selection.stale_turn_ids:
            log.info(
                "excluded %d on-policy turns served under skill_set_version < %s from the "
                "on-policy update (support/query separation)",
                len(selection.stale_turn_ids),
                current,
            )
        if held_out:
            selection.skipped["held_out_for_eval"] = held_out
        if no_hint:
            selection.skipped["no_hint"] = no_hint
        skipped = dict(selection.skipped)
        self._routed = dict(selection.notes)
        batch = pack_batch(selection.samples, self.cfg.batch_size)
        if batch is None:
            return StepOutcome(
                "idle",
                f"{len(selection.samples)} usable samples < batch_size {self.cfg.batch_size}",
                skipped=skipped,
                candidates=len(turns),
            )
        return self._train(
            backend, history, resume, batch, skipped, len(turns), current, started, hints
        )

    def _stall(self, history: TrainHistory, resume: Resume, started: float) -> StepOutcome:
        """Record the stall once (a stable id per cause) and take no turns: never silent."""
        step_id = stable_id("stalled", resume.reason, resume.promoted)
        metrics = {
            "status": "stalled",
            "reason": resume.reason,
            "lineage": resume.summary(),
            "metaclaw_config": config_snapshot(self.settings),
            "duration_s": time.monotonic() - started,
        }
        if all(s.step_id != step_id for s in history.steps):
            append_rows(
                self.paths.wal,
                "train_steps",
                [
                    {
                        "step_id": step_id,
                        "step": history.next_step,
                        "backend": self.cfg.backend,
                        "base_model": self.cfg.base_model,
                        "loss_fn": self.cfg.loss_fn,
                        "turn_ids": [],
                        "metrics": metrics,
                        "ts": now_micros(),
                    }
                ],
            )
        log.error("TRAINING STALLED: %s", resume.reason)
        return StepOutcome("stalled", resume.reason, metrics=metrics)

    def _train(
        self,
        backend: TrainingBackend,
        history: TrainHistory,
        resume: Resume,
        batch: list[Sample],
        skipped: dict[str, int],
        candidates: int,
        skill_version: int | None,
        started: float,
        hints: dict[str, list[Hint]] | None = None,
    ) -> StepOutcome:
        cfg = self.cfg
        rl = [s for s in batch if s.kind == "rl"]
        used_hints: dict[str, list[str]] = {}
        if cfg.loss_fn == "distillation":
            self._distill(backend, rl, hints or {}, used_hints)
        rollouts, rollout_report = self._rule_rollouts(backend, batch, hints or {}, used_hints)
        sft = [s for s in batch if s.kind == "sft"] + rollouts
        parent = resume.state_path or f"base:{backend.base_model}"
        turn_ids = sorted(s.turn_id for s in batch)
        step = history.next_step
        step_id = stable_id(parent, turn_ids, cfg.loss_fn, backend.base_model, backend.name)
        checkpoint_id = f"ckpt-{step:06d}-{step_id[:10]}"
        rewards = [s.reward for s in batch if s.reward is not None]
        metrics: dict[str, Any] = {
            "n_samples": len(rl) + len(sft),
            "n_rl": len(rl),
            "n_sft": len(sft),
            "tokens": sum(s.tokens for s in [*rl, *sft]),
            "completion_tokens": sum(len(s.completion) for s in [*rl, *sft]),
            "reward_mean": sum(rewards) / len(rewards) if rewards else None,
            "rl_reward_sum": sum(s.reward or 0.0 for s in rl if s.reward is not None),
            "rl_n": sum(1 for s in rl if s.reward is not None),
            "baseline": history.baseline(cfg.baseline_decay),
            "advantage_mean": (sum(s.advantage or 0.0 for s in rl) / len(rl)) if rl else None,
            "advantage_methods": dict(Counter(s.advantage_method for s in rl)),
            "skipped": skipped,
            "routed": self._routed,
            "skill_set_version": skill_version,
            "parent_state_path": parent,
            "lineage": resume.summary(),
            # per RL sample: steps between the checkpoint that served it and this learner
            "staleness": {s.turn_id: s.staleness for s in rl},
            "truncated": {s.turn_id: s.truncated for s in sft if s.truncated},
            "config": effective_config(self.settings, backend),
            # the whole MetaClawConfig (secrets masked) + its hash: the run is reproducible
            "metaclaw_config": config_snapshot(self.settings),
        }
        if used_hints:
            metrics["hints"] = used_hints
        if rollout_report:
            metrics["hint_rollouts"] = rollout_report
        fb_started = time.monotonic()
        loss, kl, kl_v2 = self._losses(backend, rl, sft, metrics, backward=True)
        metrics.update(
            loss=loss,
            loss_per_token=loss / max(1, metrics["completion_tokens"]),
            kl=kl,
            kl_v2=kl_v2,
        )
        failure = self._guard(loss, kl, kl_v2, "", "max_kl")
        if failure is None:
            opt = backend.optim_step(self._adam())
            metrics["optim"] = opt.metrics or {}
            metrics["step_time_s"] = time.monotonic() - fb_started
            # the same batch under the updated weights: a broken or diverging update is never
            # saved (it would otherwise become the state every later step resumes from)
            after, kl_after, kl_v2_after = self._losses(backend, rl, sft, {}, backward=False)
            metrics.update(loss_after=after, kl_after=kl_after, kl_v2_after=kl_v2_after)
            failure = self._guard(
                after, kl_after, kl_v2_after, "after the update: ", "max_update_kl"
            )
        if failure is not None:
            self._loaded = None  # pending gradients or a bad update: reload the last good state
            metrics.update(status="failed", reason=failure, duration_s=time.monotonic() - started)
            self._append_step(step_id, step, backend, turn_ids, metrics)
            log.error(
                "train step %d failed: %s (turns quarantined: %d)", step, failure, len(turn_ids)
            )
            return StepOutcome(
                "failed", failure, step, step_id, None, None, metrics, skipped, candidates
            )
        state_path = backend.save_state(checkpoint_id)
        sampler_path = backend.save_weights_for_sampler(checkpoint_id)
        self._loaded = state_path
        metrics.update(
            status="ok",
            checkpoint_id=checkpoint_id,
            state_path=state_path,
            sampler_path=sampler_path,
            duration_s=time.monotonic() - started,
        )
        self._append_step(step_id, step, backend, turn_ids, metrics)
        self._append_candidate(checkpoint_id, step, backend.name, sampler_path, metrics)
        log.info(
            "train step %d: loss %.4g kl %.3g reward %.3g on %d turns → %s",
            step,
            loss,
            kl,
            metrics["reward_mean"] or 0.0,
            len(batch),
            sampler_path,
        )
        return StepOutcome(
            "trained", "", step, step_id, checkpoint_id, sampler_path, metrics, skipped, candidates
        )

    def _losses(
        self,
        backend: TrainingBackend,
        rl: list[Sample],
        sft: list[Sample],
        metrics: dict[str, Any],
        *,
        backward: bool,
    ) -> tuple[float, float, float]:
        """Summed loss and sampler→learner KL (v1, v2) over the RL tokens of the batch."""
        run = backend.forward_backward if backward else backend.forward
        loss = 0.0
        sampler: list[float] = []
        learner: list[float] = []
        if rl:
            rl_loss = (
                "importance_sampling" if self.cfg.loss_fn == "distillation" else self.cfg.loss_fn
            )
            out = run([s.datum() for s in rl], rl_loss, self._loss_config())
            metrics["loss_rl"] = loss_of(out)
            loss += loss_of(out)
            for s, lps in zip(rl, learner_logprobs(out), strict=True):
                sampler.extend(s.sampler_logprobs or [])
                learner.extend(lps[completion_span(len(s.prompt), len(s.completion))])
        if sft:
            out = run([s.datum() for s in sft], "cross_entropy", None)
            metrics["loss_sft"] = loss_of(out)
            loss += loss_of(out)
        kl, kl_v2 = sampler_learner_kl(sampler, learner)
        return loss, kl, kl_v2

    def _guard(
        self,
        loss: float,
        kl: float,
        kl_v2: float,
        when: str,
        limit: Literal["max_kl", "max_update_kl"],
    ) -> str | None:
        """Before the update the KL says whether the turns came from this learner's recent
        lineage (healthy ≈ 0); after it, how far the step moved its own batch (healthy steps
        are 10–100× larger): two questions, two limits."""
        if not math.isfinite(loss):
            return f"{when}non-finite loss {loss}"
        if not (math.isfinite(kl) and math.isfinite(kl_v2)):
            return f"{when}non-finite sampler/learner KL"
        bound = getattr(self.cfg, limit)
        if max(abs(kl), kl_v2) > bound:
            return (
                f"{when}sampler/learner KL {kl:.4g} (v2 {kl_v2:.4g}) exceeds "
                f"training.{limit} {bound}"
            )
        return None

    def run(self, max_steps: int | None = None) -> list[StepOutcome]:
        """Steps until idle, a failure, or `max_steps` (default training.max_steps_per_run)."""
        outcomes: list[StepOutcome] = []
        for _ in range(max_steps or self.cfg.max_steps_per_run):
            outcome = self.step()
            outcomes.append(outcome)
            if outcome.status != "trained":
                break
        return outcomes

    # -- helpers --------------------------------------------------------------------------
    def _loss_config(self) -> dict[str, float] | None:
        if self.cfg.loss_fn not in ("ppo", "cispo"):
            return None
        config = {}
        if self.cfg.clip_low is not None:
            config["clip_low_threshold"] = self.cfg.clip_low
        if self.cfg.clip_high is not None:
            config["clip_high_threshold"] = self.cfg.clip_high
        return config or None

    def _adam(self) -> types.AdamParams:
        c = self.cfg
        return types.AdamParams(
            learning_rate=c.learning_rate,
            beta1=c.adam_beta1,
            beta2=c.adam_beta2,
            eps=c.adam_eps,
            weight_decay=c.weight_decay,
            grad_clip_norm=c.grad_clip_norm,
        )

    def _append_step(
        self,
        step_id: str,
        step: int,
        backend: TrainingBackend,
        turn_ids: list[str],
        metrics: dict[str, Any],
    ) -> None:
        append_rows(
            self.paths.wal,
            "train_steps",
            [
                {
                    "step_id": step_id,
                    "step": step,
                    "backend": backend.name,
                    "base_model": backend.base_model,
                    "loss_fn": self.cfg.loss_fn,
                    "turn_ids": turn_ids,
                    "metrics": metrics,
                    "ts": now_micros(),
                }
            ],
        )

    def _append_candidate(
        self, checkpoint_id: str, step: int, backend: str, path: str, metrics: dict[str, Any]
    ) -> None:
        summary = {
            k: metrics.get(k)
            for k in ("loss", "kl", "reward_mean", "tokens", "n_samples", "state_path")
        }
        summary["config_sha256"] = (metrics.get("metaclaw_config") or {}).get("sha256")
        append_rows(
            self.paths.wal,
            "checkpoints",
            [
                {
                    "event_id": checkpoint_event_id(checkpoint_id, "candidate"),
                    "checkpoint_id": checkpoint_id,
                    "step": step,
                    "backend": backend,
                    "path": path,
                    "status": "candidate",
                    "eval_metrics": None,
                    "reason": f"trained: {json.dumps(summary, default=str)}",
                    "ts": now_micros(),
                }
            ],
        )

    def _repair(self, history: TrainHistory) -> None:
        for record in history.missing_candidates():
            m = record.metrics
            log.warning(
                "re-recording candidate %s (its row was lost in a crash)", m["checkpoint_id"]
            )
            self._append_candidate(
                m["checkpoint_id"],
                record.step,
                (m.get("config") or {}).get("backend_impl", "local"),
                str(m.get("sampler_path") or m.get("state_path") or ""),
                m,
            )
