"""`connect openclaw` writes the key-holding config safely: a symlinked config stays a symlink,
and no planted file name receives the key."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from metaclaw.connect.openclaw import connect_openclaw, undo_openclaw

BASE = "http://127.0.0.1:30000/v1"


def test_a_symlinked_config_stays_a_symlink(tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles" / "openclaw.json"
    dotfiles.parent.mkdir()
    dotfiles.write_text('{"agents": {}}')
    dotfiles.chmod(0o600)
    link = tmp_path / ".openclaw" / "openclaw.json"
    link.parent.mkdir()
    link.symlink_to(dotfiles)
    connect_openclaw(link, base_url=BASE, api_key="pk-secret")
    assert link.is_symlink() and link.resolve() == dotfiles
    assert "metaclaw" in json.loads(dotfiles.read_text())["models"]["providers"]
    assert stat.S_IMODE(dotfiles.stat().st_mode) == 0o600
    undo_openclaw(link)
    assert link.is_symlink() and dotfiles.read_text() == '{"agents": {}}'


def test_a_planted_temp_name_never_receives_the_key(tmp_path: Path) -> None:
    config = tmp_path / "openclaw.json"
    config.write_text("{}")
    loot = tmp_path / "attacker-readable.txt"
    (tmp_path / "openclaw.json.metaclaw-tmp").symlink_to(loot)
    connect_openclaw(config, base_url=BASE, api_key="pk-secret")
    assert not loot.exists()
    assert "pk-secret" in config.read_text()
    assert [p.name for p in tmp_path.iterdir() if "metaclaw-tmp" in p.name] == [
        "openclaw.json.metaclaw-tmp"
    ]  # the planted link, untouched; no temp file left over
