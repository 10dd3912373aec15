"""Shared pieces of the policy-server tests: tiny model + LoRA adapters on disk, a reference
forward pass computed independently of the engine, and a way to await one generation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import torch

from metaclaw.serving.engine import EngineError, PolicyEngine, Result
from metaclaw.serving.sampling import SamplingParams
from tests.tiny_model import build_tiny_model, save_tiny_model

LORA_TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj"]


def make_adapter(model_dir: Path, out: Path, seed: int, *, hidden: int | None = None) -> Path:
    """A peft LoRA directory with random (non-zero) weights, so it visibly changes outputs.
    `hidden` builds it on a differently sized model (an adapter that does not fit)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if hidden is None:
        base = AutoModelForCausalLM.from_pretrained(model_dir)
    else:
        base, _ = build_tiny_model(seed, hidden=hidden)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=LORA_TARGETS, init_lora_weights=False)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(out)
    return out


def tiny_model_dir(root: Path, extra_eos: int | None = None) -> Path:
    directory = save_tiny_model(root)
    if extra_eos is not None:  # a model with two end-of-sequence tokens (like Qwen's)
        path = directory / "generation_config.json"
        config = json.loads(path.read_text())
        config["eos_token_id"] = [config["eos_token_id"], extra_eos]
        path.write_text(json.dumps(config))
    return directory


class Reference:
    """The same weights loaded separately; scores token sequences with one full forward."""

    def __init__(self, model_dir: Path, adapter: Path | None = None) -> None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter)).eval()
        self.model = model

    @torch.inference_mode()
    def logprobs(
        self, prompt: list[int], completion: list[int], temperature: float = 1.0
    ) -> list[float]:
        ids = torch.tensor([prompt + completion])
        logits = self.model(input_ids=ids).logits[0].float()
        scale = temperature if temperature > 0 else 1.0
        logp = torch.log_softmax(logits / scale, dim=-1)
        start = len(prompt) - 1
        return [float(logp[start + i, t]) for i, t in enumerate(completion)]

    @torch.inference_mode()
    def prompt_logprobs(self, prompt: list[int]) -> list[float]:
        logits = self.model(input_ids=torch.tensor([prompt])).logits[0].float()
        logp = torch.log_softmax(logits, dim=-1)
        return [float(logp[i - 1, t]) for i, t in enumerate(prompt) if i > 0]


async def generate(
    engine: PolicyEngine, prompt: list[int], timeout_s: float = 60, **params: Any
) -> Result:
    req = engine.submit(prompt, SamplingParams(**params), stream=False, timeout_s=timeout_s)
    return await collect(req)


async def collect(req: Any) -> Result:
    while True:
        event = await asyncio.wait_for(req.events.get(), 120)
        if isinstance(event, EngineError):
            raise event
        if isinstance(event, Result):
            return event


class RoundGate:
    """The engine's `round_hook`: holds the worker at a round boundary so a test can act in
    the gap between two decode steps, then lets exactly n rounds run."""

    def __init__(self, *, held: bool = False) -> None:
        import threading

        self._cv = threading.Condition()
        self._allowed = 0 if held else -1  # < 0: run freely; held: stops at its first round
        self._held = False
        self.rounds = 0

    def __call__(self) -> None:  # on the worker thread
        with self._cv:
            while self._allowed == 0:
                self._held = True
                self._cv.notify_all()
                self._cv.wait()
            self._held = False
            if self._allowed > 0:
                self._allowed -= 1
            self.rounds += 1

    def hold(self, timeout: float = 30) -> None:
        """Stop the worker at the next round boundary (returns once it waits there)."""
        with self._cv:
            self._allowed = 0
            if not self._cv.wait_for(lambda: self._held, timeout):
                raise TimeoutError("the engine did not reach a round boundary")

    def step(self, rounds: int = 1, timeout: float = 30) -> None:
        """Let exactly `rounds` rounds run, then hold again."""
        with self._cv:
            self._allowed = rounds
            self._held = False
            self._cv.notify_all()
            if not self._cv.wait_for(lambda: self._held and self._allowed == 0, timeout):
                raise TimeoutError("the engine did not finish the rounds")

    def release(self) -> None:
        with self._cv:
            self._allowed = -1
            self._cv.notify_all()
