"""The engine's LoRA adapter pool: check an adapter fits the model, load it under a fresh name,
put the right one in place for each forward pass, and free those nothing runs on any more.

Why a separate job from scheduling: the engine only asks "run this pass on policy P" and "free
what no group uses"; how peft holds several adapters (one must always stay registered, loading
can fail half-way) is this module's concern. Every method but `validate` runs on the engine's
worker thread, between forward passes.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from metaclaw.serving.requests import Policy

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


class AdapterError(ValueError):
    """An adapter directory that cannot be served on this model; the message says why."""


class AdapterPool:
    """The peft wrapper around the base model (made on the first adapter) and its adapters."""

    def __init__(self, model: torch.nn.Module, model_name: str) -> None:
        self.model = model
        self.model_name = model_name
        self._linear_shapes = _linear_shapes(model)
        self._peft: Any = None
        self._current: str | None = None
        self._ids = itertools.count(1)

    def validate(self, path: Path) -> dict[str, Any]:
        """Check a peft LoRA directory fits this model before touching the model."""
        path = Path(path)
        if not path.is_dir():
            raise AdapterError(f"adapter directory {path} does not exist")
        try:
            config = json.loads((path / ADAPTER_CONFIG).read_text())
        except (OSError, ValueError) as exc:
            raise AdapterError(
                f"{path / ADAPTER_CONFIG} is missing or not JSON ({exc}); "
                "expected a peft save_pretrained directory"
            ) from None
        if str(config.get("peft_type", "")).upper() != "LORA":
            raise AdapterError(
                f"{path} holds a {config.get('peft_type')!r} adapter; only LoRA adapters are served"
            )
        weights = next((path / w for w in ADAPTER_WEIGHTS if (path / w).is_file()), None)
        if weights is None:
            raise AdapterError(f"{path} has no {' or '.join(ADAPTER_WEIGHTS)}")
        if weights.suffix == ".safetensors":
            self._check_lora_shapes(weights)
        return config

    def _check_lora_shapes(self, weights: Path) -> None:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                for part, dim in ((".lora_A.", 1), (".lora_B.", 0)):
                    if part not in key:
                        continue
                    module = key.split(part)[0].removeprefix("base_model.model.")
                    shape = fh.get_slice(key).get_shape()
                    if module not in self._linear_shapes:
                        raise AdapterError(
                            f"adapter tensor {key} targets {module!r}, which this "
                            f"model ({self.model_name}) does not have: trained for a "
                            "different base model?"
                        )
                    want = self._linear_shapes[module][0 if dim == 1 else 1]
                    if shape[dim] != want:
                        raise AdapterError(
                            f"adapter tensor {key} has shape {shape}, but {module} in "
                            f"{self.model_name} has {'in' if dim == 1 else 'out'}_features="
                            f"{want}: trained for a different base model?"
                        )

    def load(self, path: Path) -> str:
        """Load the adapter at `path` under a new name (returned); on failure nothing is left
        half-registered and the pool serves what it served before."""
        from peft import PeftModel

        name = f"ckpt{next(self._ids)}"
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(
                self.model, str(path), adapter_name=name, is_trainable=False
            )
        else:
            try:
                self._peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
            except Exception:
                if name in self._peft.peft_config and len(self._peft.peft_config) > 1:
                    self._peft.delete_adapter(name)
                    self._current = None
                raise
        self._peft.eval()
        return name

    def drop_unused(self, in_use: Iterable[str | None]) -> None:
        """Free adapters outside `in_use`; peft needs one adapter kept, so keep the last."""
        if self._peft is None:
            return
        keep = set(in_use)
        for name in list(self._peft.peft_config):
            if name not in keep and len(self._peft.peft_config) > 1:
                with warnings.catch_warnings():  # "adapter was active": we set it per pass
                    warnings.simplefilter("ignore", UserWarning)
                    self._peft.delete_adapter(name)
                if self._current == name:
                    self._current = None

    @contextlib.contextmanager
    def weights(self, policy: Policy) -> Iterator[None]:
        """The model as `policy` says for the forward pass(es) inside the block."""
        if self._peft is None:
            yield
        elif policy.adapter is None:
            with self._peft.disable_adapter():
                yield
        else:
            if self._current != policy.adapter:
                self._peft.set_adapter(policy.adapter)
                self._current = policy.adapter
            yield


def _linear_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every Linear and Embedding (LoRA targets)."""
    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            shapes[name] = (module.in_features, module.out_features)
        elif isinstance(module, torch.nn.Embedding):
            shapes[name] = (module.num_embeddings, module.embedding_dim)
    return shapes
