"""The skill library on an object store (`ledger.skills_root = s3://…`, moto as a real S3
process): tables land in the bucket, and a proxy's library notices another writer's commit
through the table versions, since no local `state.json` is shared between machines."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaclaw.skills.library import SkillLibrary
from metaclaw.skills.store import Change, SkillStore
from tests.skills_helpers import SKILLS, make_skill, skills_settings


def test_library_on_s3(s3_server: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in s3_server.env.items():  # type: ignore[attr-defined]
        monkeypatch.setenv(key, value)
    uri = s3_server.bucket("skills-lib") + "/prod/skills"  # type: ignore[attr-defined]
    writer_settings = skills_settings(tmp_path / "writer", ledger={"skills_root": uri})
    proxy_settings = skills_settings(tmp_path / "proxy", ledger={"skills_root": uri})
    writer = SkillStore.open(writer_settings)
    assert writer.remote and writer.uri == uri
    writer.commit([Change("created", make_skill(n)) for n in SKILLS])
    assert not list((tmp_path / "writer" / "skills").glob("*.lance"))  # tables are not local

    library = SkillLibrary.open(proxy_settings)
    ask = [{"role": "user", "content": "my python script crashes with a traceback"}]
    debug = writer.get("debug_python_exceptions")
    first = library.select(ask)
    assert debug.ref in first.skills and first.skill_set_version == 1

    writer.commit([Change("retired", debug, reason="on another machine")])
    library.select(ask)  # starts the background check: the table versions moved
    library.wait_refreshed()
    after = library.select(ask)
    assert debug.ref not in after.skills and after.skill_set_version == 2
    assert SkillStore.open(proxy_settings).get(debug.skill_id).status == "retired"
