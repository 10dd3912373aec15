"""Only durable, sound checkpoints are evaluated or promoted.

- A Tinker checkpoint must be a persistent sampler path, `tinker://<run>/sampler_weights/<name>`.
  The ephemeral sampler of `save_weights_and_get_sampling_client` has no such path, and a
  training-state path (`…/weights/…`) is not servable; both are refused. Before evaluation the
  checkpoint's TTL is cleared (`set_checkpoint_ttl_from_tinker_path(path, None)`), because a
  TTL can expire a candidate mid-evaluation or, worse, after it was promoted.
- A local checkpoint must be a peft LoRA directory whose weights are all finite: a NaN adapter
  is never promoted, not even by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


class NotServableError(ValueError):
    """The checkpoint cannot be promoted as it is; the message says why."""


def is_tinker(path: str | None) -> bool:
    return bool(path) and str(path).startswith("tinker://")


def check_tinker_path(path: str) -> str:
    """The path itself when it is a persistent Tinker sampler checkpoint."""
    from tinker import ParsedCheckpointTinkerPath

    try:
        parsed = ParsedCheckpointTinkerPath.from_tinker_path(path)
    except ValueError:
        raise NotServableError(
            f"{path!r} is not a persistent Tinker checkpoint path (expected "
            "tinker://<run>/sampler_weights/<name>; ephemeral samplers have no path and are "
            "never promoted)"
        ) from None
    if parsed.checkpoint_type != "sampler":
        raise NotServableError(
            f"{path!r} is a Tinker {parsed.checkpoint_type} checkpoint; promote the sampler "
            "weights (save_weights_for_sampler → tinker://…/sampler_weights/…)"
        )
    return path


def local_dir(path: str, home: Path) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_absolute() and not directory.exists():
        directory = Path(home) / directory
    return directory


def check_local_adapter(path: str, home: Path) -> Path:
    """The adapter directory when it exists, is a LoRA adapter, and holds only finite weights."""
    import torch
    from safetensors.torch import load_file

    directory = local_dir(path, home)
    if not (directory / ADAPTER_CONFIG).is_file() or not (directory / ADAPTER_WEIGHTS).is_file():
        raise NotServableError(
            f"{directory} is not a LoRA checkpoint directory (needs "
            f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}); was it deleted?"
        )
    bad = [
        name
        for name, tensor in load_file(directory / ADAPTER_WEIGHTS).items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]
    if bad:
        raise NotServableError(
            f"{directory} holds non-finite (NaN/inf) weights in "
            f"{len(bad)} tensors, e.g. {bad[0]}: a diverged update"
        )
    return directory


def check_servable(path: str | None, home: Path, checkpoint_id: str = "") -> str:
    """The path to serve, or `NotServableError` saying why this checkpoint cannot be promoted."""
    if not path:
        raise NotServableError(f"checkpoint {checkpoint_id} records no path to serve")
    if is_tinker(path):
        return check_tinker_path(path)
    return str(check_local_adapter(path, home))


def pin_tinker_checkpoint(path: str, rest_client: Any, timeout_s: float) -> None:
    """Clear a Tinker checkpoint's TTL so it cannot expire during or after evaluation."""
    from metaclaw.training.tinker_backend import call_with_timeout

    call_with_timeout(
        lambda: rest_client.set_checkpoint_ttl_from_tinker_path(path, None),
        timeout_s,
        "set_checkpoint_ttl_from_tinker_path",
    )
