"""Backfill paths must lie under the allowed roots (symlinks resolved)."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaclaw.config import Settings
from metaclaw.replay.roots import PathNotAllowed, check_paths


def test_only_paths_under_the_allowed_roots_pass(tmp_path: Path) -> None:
    home, logs = tmp_path / "home", tmp_path / "logs"
    (home / "imports").mkdir(parents=True)
    logs.mkdir()
    check_paths([str(logs / "a.jsonl"), str(home / "imports" / "x")], [logs], home)
    with pytest.raises(PathNotAllowed, match=r"replay\.allowed_roots"):
        check_paths(["/etc/passwd"], [logs], home)
    (logs / "up").symlink_to(tmp_path)
    with pytest.raises(PathNotAllowed):
        check_paths([str(logs / "up" / "secret")], [logs], home)
    with pytest.raises(PathNotAllowed):
        check_paths([str(logs / ".." / "secret")], [logs], home)


def test_the_default_root_is_openclaws_state_folder() -> None:
    assert Settings(_env_file=None).replay.allowed_roots == [Path("~/.openclaw")]
