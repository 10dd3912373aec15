"""Turn a model name from the configuration into a local Hugging Face model directory.

There is no model hub here, so a name resolves to one of: an existing local directory, a GGUF
file, or a model shipped inside a package (see `packaged.py`). GGUF weights are dequantised
once into an ordinary fp32 checkpoint under `<home>/models/<slug>/` so that peft can train it
and later starts take a second instead of half a minute. The cache is written into a temporary
directory and renamed into place, under a file lock, so a crash or a concurrent start never
leaves (or reads) a half-written cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

from metaclaw.models.packaged import (
    ModelNotAvailableError,
    PackagedModel,
    find_packaged,
    locate_gguf,
    packaged_names,
    slugify,
)

log = logging.getLogger("metaclaw.models")

MARKER = "metaclaw-model.json"  # written last inside the temp dir: its presence = complete
FORMAT_VERSION = 1

Notify = Callable[[str], None]


def models_dir(home: Path) -> Path:
    return Path(home) / "models"


def resolve_model_dir(name: str, home: Path, *, notify: Notify | None = None) -> Path:
    """A local HF-format directory (config.json, weights, tokenizer) for the model `name`.

    `name` is an existing model directory, a `.gguf` file, or a packaged model's hub id or
    alias (e.g. "HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2-135m-instruct"). GGUF weights
    are converted on first use and cached under `home/models/<slug>/`; `notify` receives a line
    before a (slow) conversion starts. Anything else raises `ModelNotAvailableError`.
    """
    if not name or not name.strip():
        raise ModelNotAvailableError(
            "no model named: set METACLAW_TRAINING__BASE_MODEL (or METACLAW_POLICY__MODEL) to "
            f"a packaged model ({', '.join(packaged_names())}) or a local model directory"
        )
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotAvailableError(
                f"{path} is a directory but not a Hugging Face model (no config.json); point the "
                "model setting at a directory written by save_pretrained"
            )
        return path.resolve()
    if path.is_file() and path.suffix == ".gguf":
        source = _gguf_source(path.resolve(), label=str(path.resolve()))
        return _cached(path.resolve(), source, models_dir(home) / slugify(path.stem), notify)
    packaged = find_packaged(name)
    if packaged is not None:
        gguf = locate_gguf(packaged)
        source = _packaged_source(packaged, gguf)
        return _cached(gguf, source, models_dir(home) / packaged.slug, notify)
    local = _hf_cache_snapshot(name)
    if local is not None:
        return local
    hint = (
        " A hub-style id like this is usable only with METACLAW_TRAINING__BACKEND=tinker."
        if name.count("/") == 1 and not path.exists()
        else ""
    )
    raise ModelNotAvailableError(
        f"model {name!r} is not packaged and is not a local directory or .gguf file, and no "
        f"model hub is reachable.{hint} Use a packaged model ({', '.join(packaged_names())}) "
        "or the path of a directory written by save_pretrained."
    )


def _packaged_source(model: PackagedModel, gguf: Path) -> dict[str, Any]:
    return {
        "name": model.name,
        "distribution": model.distribution,
        "distribution_version": dist_version(model.distribution),
        **_gguf_source(gguf, label=model.name),
    }


def _gguf_source(gguf: Path, label: str) -> dict[str, Any]:
    stat = gguf.stat()
    return {
        "name": label,
        "gguf_file": gguf.name,
        "gguf_bytes": stat.st_size,
        "format": FORMAT_VERSION,
    }


def cache_is_current(target: Path, source: dict[str, Any]) -> bool:
    """True when `target` holds a complete conversion of exactly this source."""
    try:
        marker = json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("source") == source


def _cached(gguf: Path, source: dict[str, Any], target: Path, notify: Notify | None) -> Path:
    if cache_is_current(target, source):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{target.name}.lock"):
        if cache_is_current(target, source):  # another process converted it while we waited
            return target
        _remove_stale(target)
        tmp = target.parent / f".tmp-{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        message = (
            f"converting {source['name']} ({gguf.name}) to a trainable checkpoint under "
            f"{target} (one time, ~30 s)"
        )
        log.info(message)
        if notify is not None:
            notify(message)
        started = time.monotonic()
        try:
            convert_gguf(gguf, tmp)
            marker = {
                "source": source,
                "converted_s": round(time.monotonic() - started, 1),
                "transformers": dist_version("transformers"),
            }
            (tmp / MARKER).write_text(json.dumps(marker, indent=1))
            _fsync_tree(tmp)
            _swap_into_place(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF chat model into an fp32 HF checkpoint (model + tokenizer) in `out`.

    transformers refuses `save_pretrained` on a model loaded with `gguf_file=` (it is flagged
    quantised), so the weights are copied into a clean model built from the same config.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    clean.load_state_dict(loaded.state_dict())
    clean.generation_config = loaded.generation_config
    del loaded
    out.mkdir(parents=True)
    clean.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _remove_stale(target: Path) -> None:
    """Leftovers of crashed conversions (we hold the lock, so no temp dir is live)."""
    for stale in target.parent.glob(f".tmp-{target.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for stale in target.parent.glob(f".old-{target.name}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _swap_into_place(tmp: Path, target: Path) -> None:
    """rename(2) is atomic; an outdated cache is moved aside first, then deleted."""
    old = None
    if target.exists():
        old = target.parent / f".old-{target.name}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
    os.rename(tmp, target)
    _fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _hf_cache_snapshot(name: str) -> Path | None:
    """A hub id already in the local Hugging Face cache (downloaded elsewhere), else None."""
    if name.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id=name, local_files_only=True))
    except Exception:  # not cached, invalid id, or huggingface_hub absent: all mean "no"
        return None
    return path if (path / "config.json").is_file() else None
