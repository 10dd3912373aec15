"""The agent registry as a value (pure): agents, their key hashes, whose skills each may read.

Why a value with no I/O: the CLI changes it under a file lock and the proxy only reads it, and
both must agree on what a change does (a name taken, a share naming nobody, a removal leaving
no dangling share). `store.py` reads and writes it; here is only what it means.

Keys are high-entropy random strings (`new_key`), so a plain SHA-256 of the key is as hard to
invert as the key is to guess: no salt or slow hash is needed, and the proxy finds a key's agent
with one hash and one dict lookup per request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from metaclaw.ledger.schemas import DEFAULT_AGENT

KEY_PREFIX = "mck-"  # recognisable in a leaked log or config as a MetaClaw agent key
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
FORMAT_VERSION = 1


class AgentError(ValueError):
    """A registry change that cannot be made; the message says what to do instead."""


def new_key() -> str:
    """A fresh agent key: 256 bits from the OS's CSPRNG."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_name(name: str) -> str:
    """Names end up in ledger rows, SQL filters and file names: keep them plain."""
    if not _NAME.fullmatch(name):
        raise AgentError(
            f"invalid agent name {name!r}: use 1-63 lower-case letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class Agent:
    name: str
    key_sha256: str
    shares_skills_with: tuple[str, ...] = ()
    created_at: str = ""  # ISO 8601, UTC
    key_created_at: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "key_sha256": self.key_sha256,
            "shares_skills_with": list(self.shares_skills_with),
            "created_at": self.created_at,
            "key_created_at": self.key_created_at,
        }


@dataclass(frozen=True)
class Registry:
    agents: Mapping[str, Agent] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.agents)

    def get(self, name: str) -> Agent:
        try:
            return self.agents[name]
        except KeyError:
            known = ", ".join(self.agents) or "none yet"
            raise AgentError(f"no agent {name!r} (agents: {known})") from None

    def _shares(self, name: str, shares: Iterable[str]) -> tuple[str, ...]:
        out: list[str] = []
        for other in shares:
            if other == name:
                raise AgentError(f"agent {name!r} cannot share skills with itself")
            if other != DEFAULT_AGENT and other not in self.agents:
                raise AgentError(
                    f"--shares-skills-with {other!r}: no such agent; add it first "
                    f"(`metaclaw agents add {other}`) or name '{DEFAULT_AGENT}'"
                )
            if other not in out:
                out.append(other)
        return tuple(out)

    def add(self, name: str, key: str, shares: Iterable[str], now: str) -> Registry:
        check_name(name)
        if name in self.agents:
            raise AgentError(
                f"agent {name!r} exists; `metaclaw agents rotate-key {name}` issues a new key"
            )
        agent = Agent(name, key_hash(key), self._shares(name, shares), now, now)
        return Registry({**self.agents, name: agent})

    def rotate(self, name: str, key: str, now: str) -> Registry:
        """A new key for `name`; the old one stops working as soon as the proxy sees the file."""
        agent = replace(self.get(name), key_sha256=key_hash(key), key_created_at=now)
        return Registry({**self.agents, name: agent})

    def remove(self, name: str) -> Registry:
        """Without `name`, and without it in anyone's shares: a share naming nobody would
        silently read a library a later agent of that name writes."""
        self.get(name)
        kept = {}
        for n, a in self.agents.items():
            if n != name:
                kept[n] = replace(
                    a, shares_skills_with=tuple(s for s in a.shares_skills_with if s != name)
                )
        return Registry(kept)

    def key_index(self) -> dict[str, str]:
        """key hash -> agent name: what the proxy looks a presented key up in."""
        return {a.key_sha256: a.name for a in self.agents.values()}

    def skill_libraries(self, name: str) -> tuple[str, ...]:
        """The libraries an agent's turns read skills from: its own, then those it shares."""
        agent = self.agents.get(name)
        return (name, *(agent.shares_skills_with if agent else ()))

    def as_json(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "agents": [a.as_json() for a in self.agents.values()]}

    @classmethod
    def from_json(cls, data: Any) -> Registry:
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise AgentError(f"not an agent registry of format version {FORMAT_VERSION}")
        agents: dict[str, Agent] = {}
        for item in data.get("agents") or []:
            agent = Agent(
                check_name(str(item["name"])),
                str(item["key_sha256"]),
                tuple(str(s) for s in item.get("shares_skills_with") or ()),
                str(item.get("created_at") or ""),
                str(item.get("key_created_at") or ""),
            )
            agents[agent.name] = agent
        return cls(agents)


def agent_for_key(index: Mapping[str, str], key: str | None) -> str | None:
    """The agent whose key this is, or None.

    Why a dict lookup is safe where a plain `==` on keys would not be: what is compared is the
    SHA-256 of the presented key, not the key. Timing could at most reveal a prefix of a stored
    hash, and a hash does not authenticate (it would take a preimage of a 256-bit random key),
    so this is as strong as `hmac.compare_digest` against every stored hash, at O(1)."""
    if not key:
        return None
    return index.get(key_hash(key))
