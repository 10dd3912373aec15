"""Local models: packaged defaults (no hub needed) and resolving a configured model name."""

from metaclaw.models.packaged import (
    PACKAGED_MODELS,
    SMOLLM2_135M,
    ModelNotAvailableError,
    PackagedModel,
    find_packaged,
    locate_gguf,
)
from metaclaw.models.resolve import convert_gguf, models_dir, resolve_model_dir

__all__ = [
    "PACKAGED_MODELS",
    "SMOLLM2_135M",
    "ModelNotAvailableError",
    "PackagedModel",
    "convert_gguf",
    "find_packaged",
    "locate_gguf",
    "models_dir",
    "resolve_model_dir",
]
