"""SKILL.md folders are untrusted input: no alias bombs, no symlinks, typed fields, bounded."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from metaclaw.skills import ops, skillmd
from metaclaw.skills.model import SkillValidationError
from metaclaw.skills.store import Change, SkillStore
from tests.skills_helpers import make_skill, skills_settings

# 317 bytes of YAML whose `name` expands to 9^5 copies of "lol…" (≈ 2 MB) through aliases
BOMB = """---
a: &a ["lolololololololololololololololololol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
name: *e
description: a skill
---

body
"""


def test_an_alias_bomb_is_refused_before_it_expands() -> None:
    start = time.perf_counter()
    with pytest.raises(SkillValidationError, match="anchors/aliases"):
        skillmd.parse(BOMB, source="bomb/SKILL.md")
    assert time.perf_counter() - start < 0.5


@pytest.mark.parametrize(
    "front, why",
    [
        ("name: [a, b]\ndescription: d", "`name` must be text"),
        ("name: ok\ndescription: {x: 1}", "`description` must be text"),
        ("name: ok\ndescription: d\ncategory: 7", "`category` must be text"),
        (
            "name: ok\ndescription: d\nmetadata: {metaclaw: {composes: 5}}",
            "composes must be a list",
        ),
        ("name: ok\ndescription: " + "x" * 20_000, "front matter over"),
    ],
)
def test_front_matter_fields_have_types_and_a_size(front: str, why: str) -> None:
    with pytest.raises(SkillValidationError, match=why):
        skillmd.parse(f"---\n{front}\n---\n\nbody\n", source="s/SKILL.md")


def _write(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "SKILL.md").write_text(f"---\nname: {name}\ndescription: d {name}\n---\n\nDo it.\n")


def test_import_follows_no_symlink_and_caps_the_file_size(tmp_path: Path) -> None:
    store = SkillStore.open(skills_settings(tmp_path / "home"))
    outside = tmp_path / "outside"
    _write(outside / "secret_skill", "secret_skill")
    src = tmp_path / "src"
    _write(src / "good_skill", "good_skill")
    (src / "linked_folder").symlink_to(outside / "secret_skill")
    (src / "linked_file").mkdir()
    (src / "linked_file" / "SKILL.md").symlink_to(outside / "secret_skill" / "SKILL.md")
    (src / "huge").mkdir()
    (src / "huge" / "SKILL.md").write_text(
        "---\nname: huge\ndescription: d\n---\n\n" + "x" * (skillmd.MAX_FILE_BYTES + 1)
    )
    report, _ = ops.import_dir(store, src)
    assert report.created == ["good_skill"]
    assert [s.name for s in store.current()] == ["good_skill"]
    assert sorted(e.split(": ", 1)[1] for e in report.errors) == [
        "a symlink; import reads regular files only",
        f"over {skillmd.MAX_FILE_BYTES} bytes; not a SKILL.md",
    ]


def test_export_never_writes_through_a_symlink(tmp_path: Path) -> None:
    store = SkillStore.open(skills_settings(tmp_path / "home"))
    store.commit([Change("created", make_skill("translate_text"))])
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    (out / "translate_text").mkdir(parents=True)
    (out / "translate_text" / "SKILL.md").symlink_to(victim)
    assert ops.export_dir(store, out) == 1
    assert victim.read_text() == "precious"
    written = out / "translate_text" / "SKILL.md"
    assert not written.is_symlink() and "name: translate_text" in written.read_text()

    (tmp_path / "elsewhere").mkdir()
    out2 = tmp_path / "out2"
    out2.mkdir()
    (out2 / "translate_text").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SkillValidationError, match="a symlink"):
        ops.export_dir(store, out2)
    assert list((tmp_path / "elsewhere").iterdir()) == []
