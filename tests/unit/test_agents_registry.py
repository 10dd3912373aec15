"""The agent registry: what a change means (pure), and its file (real files, real locks)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from metaclaw.agents.registry import AgentError, Registry, agent_for_key, key_hash, new_key
from metaclaw.agents.store import AgentKeys, load, registry_path, update

NOW = "2026-01-01T00:00:00+00:00"


def test_a_key_finds_its_agent_and_nothing_else_does() -> None:
    a, b = new_key(), new_key()
    registry = Registry().add("coder", a, [], NOW).add("helper", b, ["coder"], NOW)
    index = registry.key_index()
    assert agent_for_key(index, a) == "coder" and agent_for_key(index, b) == "helper"
    assert agent_for_key(index, a + "x") is None
    assert agent_for_key(index, None) is None and agent_for_key(index, "") is None
    assert registry.skill_libraries("helper") == ("helper", "coder")
    assert registry.skill_libraries("coder") == ("coder",)
    assert registry.skill_libraries("default") == ("default",)


def test_rotation_retires_the_old_key() -> None:
    old, new = new_key(), new_key()
    registry = Registry().add("coder", old, [], NOW).rotate("coder", new, "later")
    index = registry.key_index()
    assert agent_for_key(index, old) is None and agent_for_key(index, new) == "coder"
    agent = registry.get("coder")
    assert agent.created_at == NOW and agent.key_created_at == "later"


def test_removal_drops_the_agent_from_every_share() -> None:
    registry = (
        Registry()
        .add("coder", new_key(), [], NOW)
        .add("helper", new_key(), ["coder", "default"], NOW)
        .remove("coder")
    )
    assert list(registry.agents) == ["helper"]
    assert registry.get("helper").shares_skills_with == ("default",)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda r: r.add("Coder", new_key(), [], NOW), "invalid agent name"),
        (lambda r: r.add("a b", new_key(), [], NOW), "invalid agent name"),
        (lambda r: r.add("coder", new_key(), [], NOW), "rotate-key coder"),
        (lambda r: r.add("x", new_key(), ["ghost"], NOW), "no such agent"),
        (lambda r: r.add("x", new_key(), ["x"], NOW), "itself"),
        (lambda r: r.rotate("ghost", new_key(), NOW), "no agent 'ghost'"),
        (lambda r: r.remove("ghost"), "no agent 'ghost'"),
    ],
)
def test_refused_changes_say_why(change: object, words: str) -> None:
    registry = Registry().add("coder", new_key(), [], NOW)
    with pytest.raises(AgentError, match=words):
        change(registry)  # type: ignore[operator]


def test_the_file_holds_hashes_never_keys(tmp_path: Path) -> None:
    path = registry_path(tmp_path)
    key = new_key()
    update(path, lambda r: r.add("coder", key, [], NOW))
    text = path.read_text()
    assert key not in text and key[len("mck-") :] not in text
    assert key_hash(key) in text
    assert os.stat(path).st_mode & 0o077 == 0, "readable by its owner only"
    assert load(path) == Registry().add("coder", key, [], NOW)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_concurrent_changes_are_never_lost(tmp_path: Path) -> None:
    path = registry_path(tmp_path)
    names = [f"agent-{i}" for i in range(12)]
    threads = [
        threading.Thread(target=update, args=(path, lambda r, n=n: r.add(n, new_key(), [], NOW)))
        for n in names
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(load(path).agents) == sorted(names)


def test_the_proxy_view_follows_the_file(tmp_path: Path) -> None:
    path = registry_path(tmp_path)
    keys = AgentKeys(path, recheck_s=0)
    assert keys.index() == {}, "no file: no agents"
    first = new_key()
    update(path, lambda r: r.add("coder", first, [], NOW))
    assert agent_for_key(keys.index(), first) == "coder"
    second = new_key()
    update(path, lambda r: r.rotate("coder", second, NOW))
    assert agent_for_key(keys.index(), first) is None
    assert agent_for_key(keys.index(), second) == "coder"
    path.write_text("{not json")  # a bad hand edit keeps the agents loaded before
    assert agent_for_key(keys.index(), second) == "coder"
    with pytest.raises(AgentError, match="cannot read the agent registry"):
        AgentKeys(path)  # ... but nothing starts on a registry it cannot read


def test_the_proxy_view_looks_at_the_file_at_most_every_recheck(tmp_path: Path) -> None:
    path = registry_path(tmp_path)
    keys = AgentKeys(path, recheck_s=0.3)
    key = new_key()
    update(path, lambda r: r.add("coder", key, [], NOW))
    assert keys.index() == {}, "within recheck_s of the last look: the registry as it was"
    deadline = time.monotonic() + 5
    while agent_for_key(keys.index(), key) is None:
        assert time.monotonic() < deadline, "the change was never picked up"
        time.sleep(0.05)
