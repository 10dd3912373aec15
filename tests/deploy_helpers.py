"""Shared pieces of the deploy tests: LoRA checkpoints trained on the tiny model toward (or away
from) the stub judge's taste, and a ledger seeded with held-out, scored turns."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from tinker import types

from metaclaw.config import LedgerPaths, Settings
from metaclaw.deploy.split import is_eval_session
from metaclaw.ledger import append_rows
from metaclaw.ledger.records import now_micros

TRAIN_PROMPTS = [f"Question {i}: tell me something." for i in range(8)] + [
    "The grass is green.",
    "def add(a, b): return a + b",
    "Hello! Thanks, that is wrong.",
]
SYSTEMS = ["Be brief.", "You are a helpful assistant.", "Answer the question."]
EVAL_QUESTIONS = [
    "What is the capital of France?",
    "Say hello.",
    "What colour is the sky?",
    "Name a city.",
    "How can I help you today?",
    "Answer in one word, please.",
    "What is two plus two?",
    "Thanks, that works.",
    "Try again, please.",
    "Where is the grass green?",
]
LORA_RANK = 4
# more distinct held-out prompts, for gate runs that need more than a handful of decided prompts
MANY_QUESTIONS = [f"{q} (case {i})" for i, q in enumerate(EVAL_QUESTIONS * 3)]


def train_toward(
    model_dir: Path, out_dir: Path, name: str, word: str, steps: int = 80, rank: int = LORA_RANK
) -> Path:
    """A LocalBackend checkpoint (state + sampler dir) that answers `word` to anything."""
    from metaclaw.serving.chat import render_prompt
    from metaclaw.training.datums import sft_datum
    from metaclaw.training.local import LocalBackend

    torch.manual_seed(0)
    backend = LocalBackend(model_dir, checkpoint_dir=out_dir, lora_rank=rank, device="cpu")
    tok = backend.get_tokenizer()
    target = tok(f"{word}<|im_end|>", add_special_tokens=False)["input_ids"]
    data = []
    for i, q in enumerate(TRAIN_PROMPTS):
        messages = [{"role": "user", "content": q}]
        for system in ([], [{"role": "system", "content": SYSTEMS[i % len(SYSTEMS)]}]):
            text = render_prompt(tok, system + messages, None)
            data.append(sft_datum(tok(text, add_special_tokens=False)["input_ids"], target))
    for _ in range(steps):
        backend.forward_backward(data, "cross_entropy")
        backend.optim_step(types.AdamParams(learning_rate=1e-2))
    return Path(backend.save_state(name))


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def poison_checkpoint(src: Path, dst: Path) -> Path:
    """A copy whose adapter weights are NaN (a diverged update)."""
    from safetensors.torch import load_file, save_file

    copy_checkpoint(src, dst)
    weights = load_file(dst / "adapter_model.safetensors")
    save_file(
        {k: torch.full_like(v, float("nan")) for k, v in weights.items()},
        str(dst / "adapter_model.safetensors"),
    )
    return dst


def perturb_checkpoint(src: Path, dst: Path, sigma: float, seed: int) -> Path:
    """A copy whose adapter weights carry N(0, σ²) noise: a noise-level update (A/A tests)."""
    from safetensors.torch import load_file, save_file

    copy_checkpoint(src, dst)
    weights = load_file(dst / "adapter_model.safetensors")
    gen = torch.Generator().manual_seed(seed)
    save_file(
        {
            k: v + sigma * torch.randn(v.shape, generator=gen, dtype=v.dtype)
            for k, v in weights.items()
        },
        str(dst / "adapter_model.safetensors"),
    )
    return dst


def candidate_row(
    checkpoint_id: str,
    path: Path | str,
    step: int,
    metrics: dict[str, Any] | None = None,
    ts: int | None = None,
) -> dict[str, Any]:
    """The row the trainer writes for a new candidate (same shape as Trainer._append_candidate)."""
    summary = {"loss": 0.5, "kl": 0.001, "reward_mean": 0.5, **(metrics or {})}
    return {
        "event_id": f"cand-{checkpoint_id}",
        "checkpoint_id": checkpoint_id,
        "step": step,
        "backend": "local",
        "path": str(path),
        "status": "candidate",
        "eval_metrics": None,
        "reason": f"trained: {json.dumps(summary)}",
        "ts": ts or now_micros(),
    }


def add_candidates(paths: LedgerPaths, *rows: dict[str, Any]) -> None:
    append_rows(paths.wal, "checkpoints", list(rows))


def session_of(turn_id: str) -> str:
    """The session `seed_turns` puts a turn in (one turn per session unless told otherwise)."""
    return f"s-{turn_id}"


def eval_turn_ids(settings: Settings, n: int, *, held_out: bool = True) -> list[str]:
    """Turn ids whose own session (`session_of`) is held out (or, with held_out=False, not)."""
    out: list[str] = []
    while len(out) < n:
        tid = uuid.uuid4().hex
        if is_eval_session(session_of(tid), settings) == held_out:
            out.append(tid)
    return out


def seed_turns(
    paths: LedgerPaths,
    turn_ids: list[str],
    questions: list[str] | None = None,
    reward: float | None = 1.0,
    start: int | None = None,
    session: str | None = None,
    injected_text: str | None = None,
) -> None:
    """Completed user turns (one question each) with explicit feedback as their reward, each in
    its own session (`session_of`) unless `session` is given."""
    questions = questions or EVAL_QUESTIONS
    ts = start or now_micros()
    turns, feedback = [], []
    for i, tid in enumerate(turn_ids):
        q = questions[i % len(questions)]
        request = {
            "model": "m",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": q},
            ],
        }
        turns.append(
            {
                "turn_id": tid,
                "session_id": session or session_of(tid),
                "turn_index": i,
                "ts_start": ts + i,
                "ts_end": ts + i + 5,
                "client": "openai",
                "endpoint": "/v1/chat/completions",
                "request": json.dumps(request),
                "served_by": "upstream",
                "completion_text": "ok",
                "status": "ok",
                "http_status": 200,
                "source": "live",
                "injected_text": injected_text,
            }
        )
        if reward is not None:
            feedback.append(
                {
                    "feedback_id": uuid.uuid4().hex,
                    "turn_id": tid,
                    "value": reward,
                    "ts": ts + i + 10,
                }
            )
    append_rows(paths.wal, "turns", turns)
    if feedback:
        append_rows(paths.wal, "feedback", feedback)


def deploy_settings(
    home: Path, model_dir: Path, judge_url: str | None, policy_port: int, **deploy: Any
) -> Settings:
    judge = {"base_url": judge_url, "model": "stub-pairwise"} if judge_url else {}
    return Settings(
        home=home,
        training={"base_model": str(model_dir), "lora_rank": LORA_RANK, "device": "cpu"},
        judge={**judge, "timeout_s": 30, "retries": 0},
        policy={"port": policy_port, "model": str(model_dir)},
        deploy={
            "max_new_tokens": 12,
            "min_eval_prompts": 6,
            "eval_size": 10,
            "eval_fraction": 0.5,
            "max_kl": 1000.0,
            **deploy,
        },
    )


def statuses(paths: LedgerPaths) -> dict[str, str]:
    from metaclaw.deploy.store import read_book

    return {cid: c.status for cid, c in read_book(paths).checkpoints.items()}


def aa_sequence(
    settings: Settings,
    promoted: Path,
    root: Path,
    n: int,
    sigmas: tuple[float, ...] = (0.0, 0.003, 0.01, 0.03),
    first_step: int = 100,
) -> list[Any]:
    """A/A through the real gate: `n` candidates that are the promoted weights plus a no-op
    (σ = 0) or noise-level update (N(0, σ²) on every adapter weight, σ cycling through `sigmas`),
    each registered as the trainer would and judged by `deployer.run_gate`. Returns the
    `GateOutcome`s; a promotion among them is a false promotion."""
    from metaclaw.deploy import deployer

    outcomes = []
    for i in range(n):
        cid = f"aa-{i:03d}"
        path = perturb_checkpoint(promoted, root / cid, sigmas[i % len(sigmas)], seed=i)
        add_candidates(settings.paths, candidate_row(cid, path, first_step + i))
        outcomes.append(deployer.run_gate(settings, cid, notify=False))
    return outcomes
