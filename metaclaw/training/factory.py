"""Build the configured backend and teacher from `Settings` (the only place that reads them).

Kept apart from the trainer so tests and benchmarks can hand the trainer any backend (a fake,
a pre-built tiny model) through the same seam a deployment uses.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from metaclaw.config import Settings
from metaclaw.training.backend import TrainingBackend
from metaclaw.training.teacher import (
    OpenAICompletionsTeacher,
    SamplingClientTeacher,
    Teacher,
)

if TYPE_CHECKING:
    from metaclaw.training.local import LocalBackend

log = logging.getLogger("metaclaw.training")


class TrainingConfigError(ValueError):
    """The training section cannot work as configured; the message names the setting."""


def resolve_base_model_dir(settings: Settings) -> Path:
    """A local HF directory for `training.base_model`: the path itself, or what
    `metaclaw.models.resolve_model_dir` makes of the name (e.g. the packaged SmolLM2)."""
    name = settings.training.base_model
    if Path(name).expanduser().is_dir():
        return Path(name).expanduser()
    try:
        from metaclaw.models import resolve_model_dir  # the embedded-model package (issue 3)
    except ImportError:
        raise TrainingConfigError(
            f"training.base_model={name!r} is not a local model directory and "
            "metaclaw.models.resolve_model_dir is not available; set "
            "METACLAW_TRAINING__BASE_MODEL to a Hugging Face model directory"
        ) from None
    return Path(resolve_model_dir(name, settings.paths.home))


def tinker_base_model(settings: Settings, api_key: str | None) -> str:
    """`training.base_model` when set explicitly; else Kimi-K2.5 if the service offers it, with
    a logged fallback to Qwen3-4B (asked of `get_server_capabilities`, not hard-coded: Tinker's
    lineup changes). The default `base_model` is the packaged local model, meaningless here."""
    cfg = settings.training
    if "base_model" in cfg.model_fields_set:
        return cfg.base_model
    import tinker

    from metaclaw.providers import choose_tinker_base_model
    from metaclaw.training.tinker_backend import call_with_timeout

    capabilities = call_with_timeout(
        lambda: tinker.RestClient(
            base_url=cfg.tinker_base_url, api_key=api_key
        ).get_server_capabilities(),
        cfg.tinker_timeout_s,
        "get_server_capabilities",
    )
    choice = choose_tinker_base_model(capabilities)
    (log.warning if choice.fell_back else log.info)("tinker base model: %s", choice.reason)
    return choice.model


def tinker_api_key(settings: Settings) -> str | None:
    """The configured key (None: the SDK reads $TINKER_API_KEY); neither is a configuration
    error, raised before any Tinker call (a call without a key hangs, then fails)."""
    cfg = settings.training
    key = cfg.tinker_api_key.get_secret_value() if cfg.tinker_api_key else None
    if not (key or os.environ.get("TINKER_API_KEY")):
        raise TrainingConfigError(
            "training.backend=tinker needs TINKER_API_KEY (or METACLAW_TRAINING__TINKER_API_KEY)"
        )
    return key


def make_backend(settings: Settings) -> TrainingBackend:
    cfg = settings.training
    if cfg.backend == "tinker":
        from metaclaw.training.tinker_backend import TinkerBackend

        key = tinker_api_key(settings)
        return TinkerBackend(
            tinker_base_model(settings, key),
            lora_rank=cfg.lora_rank,
            seed=cfg.seed,
            timeout_s=cfg.tinker_timeout_s,
            ttl_s=cfg.tinker_state_ttl_s,
            base_url=cfg.tinker_base_url,
            api_key=key,
        )
    return make_local_backend(settings)


def make_local_backend(settings: Settings) -> LocalBackend:
    """The transformers + peft backend (also what the local gate samples through)."""
    from metaclaw.training.local import LocalBackend

    cfg = settings.training
    return LocalBackend(
        resolve_base_model_dir(settings),
        checkpoint_dir=settings.paths.checkpoints,
        base_model=cfg.base_model,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        seed=cfg.seed,
        device=cfg.device,
    )


def make_teacher(settings: Settings, backend: TrainingBackend) -> Teacher:
    """The distillation teacher: an OpenAI-compatible endpoint, or a Tinker sampler."""
    cfg = settings.training
    if cfg.teacher_base_url:
        if not cfg.teacher_model:
            raise TrainingConfigError("training.teacher_base_url also needs training.teacher_model")
        key = cfg.teacher_api_key.get_secret_value() if cfg.teacher_api_key else None
        return OpenAICompletionsTeacher(cfg.teacher_base_url, cfg.teacher_model, key)
    if cfg.teacher_model and backend.name == "tinker":
        from metaclaw.training.tinker_backend import TinkerBackend, call_with_timeout

        assert isinstance(backend, TinkerBackend)
        service, teacher = backend.service, cfg.teacher_model
        create = (
            functools.partial(service.create_sampling_client, model_path=teacher)
            if teacher.startswith("tinker://")
            else functools.partial(service.create_sampling_client, base_model=teacher)
        )
        client = call_with_timeout(create, cfg.tinker_timeout_s, "create_sampling_client")
        return SamplingClientTeacher(client, cfg.tinker_timeout_s)
    raise TrainingConfigError(
        "training.loss_fn=distillation needs a teacher: set training.teacher_base_url + "
        "training.teacher_model (OpenAI-compatible completions with echo logprobs), or "
        "training.teacher_model with training.backend=tinker"
    )
