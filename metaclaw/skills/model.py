"""What a skill is, and what a skill may say (pure: no I/O).

A skill is one version of a named piece of advice the proxy can add to the system prompt. It
belongs to one agent's library (docs/agents.md). Its id is derived from its agent and name
(`sk-` + hash), so it stays the same across versions, importing the same SKILL.md folder twice
finds the skills it made the first time, and two agents' skills of the same name are two skills.
Content is immutable per version; only the lifecycle fields (`status`, `pinned`, `updated_at`)
ever change on a row.

Validation matters because skills are a prompt-injection persistence vector: text an attacker
gets into a conversation could be turned by the critic into a skill that is then injected into
later conversations. So a skill must be small, plain, and pass the hard rules of
`metaclaw.skills.safety` (no URLs, network tools, secrets, "ignore the user", claimed authority,
invisible characters), and a skill the critic writes starts `proposed` (quarantined).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from metaclaw.ledger.schemas import DEFAULT_AGENT
from metaclaw.skills.safety import hard_problems

# proposed: quarantined (only its origin sessions, until its efficacy clears the bar);
# rejected and retired are sticky: evolution never brings such a skill back
STATUSES = ("proposed", "active", "retired", "rejected", "superseded")
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{1,63}$")
CATEGORY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
MAX_DESCRIPTION = 500
MAX_WHEN = 500


class SkillValidationError(ValueError):
    """A skill was rejected; the message names the field and the rule."""


def normalize_name(name: str) -> str:
    """`Handle Ambiguous-Queries` → `handle_ambiguous-queries`: lower case, spaces to `_`."""
    name = unicodedata.normalize("NFKC", str(name)).strip().lower()
    return re.sub(r"[^a-z0-9_-]+", "_", name).strip("_-")


def skill_id_for(name: str, agent_id: str = DEFAULT_AGENT) -> str:
    """The stable id of `agent_id`'s skill called `name` (`-` and `_` are the same letter here).

    The agent is part of the hash, so one agent's skill never shares an id, a version lineage or
    efficacy statistics with another's of the same name; the `default` agent's ids are derived as
    before agents existed, so libraries and turns written then keep their ids."""
    key = normalize_name(name).replace("-", "_")
    if agent_id != DEFAULT_AGENT:
        key = f"{agent_id}\x1f{key}"
    return "sk-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def ref(skill_id: str, version: int) -> str:
    """How turns name an injected skill: `skill_id@version`."""
    return f"{skill_id}@{version}"


def parse_ref(value: str) -> tuple[str, int]:
    skill_id, sep, version = value.rpartition("@")
    if not sep or not version.isdigit():
        raise ValueError(f"not a skill reference (skill_id@version): {value!r}")
    return skill_id, int(version)


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Skill:
    """One version of a skill (a row of the LanceDB `skills` table, less its vector)."""

    name: str
    description: str
    instructions: str
    when_to_use: str = ""
    category: str = "general"
    composes: tuple[str, ...] = ()  # skill ids this one builds on
    version: int = 1
    status: str = "active"
    diagnosis_ids: tuple[str, ...] = ()
    parent_version: int | None = None
    merged_from: tuple[str, ...] = ()  # skill ids folded into this version
    author: str = "user"  # critic model, "import:<dir>", or "user"
    pinned: bool = False  # restored or pinned by hand: auto-retirement and evolution leave it
    origin_sessions: tuple[str, ...] = ()  # a proposal is injected only here (and trial_share)
    scan: str = ""  # "safe:<critic model>" once the intent scan passed; "" = unscanned
    created_at: datetime = field(default_factory=now)
    updated_at: datetime = field(default_factory=now)
    set_version: int = 0  # the skill-set version that wrote this row
    agent_id: str = DEFAULT_AGENT  # whose library it is in (docs/agents.md)
    skill_id: str = ""

    def __post_init__(self) -> None:
        if not self.skill_id:
            object.__setattr__(self, "skill_id", skill_id_for(self.name, self.agent_id))

    @property
    def ref(self) -> str:
        return ref(self.skill_id, self.version)

    @property
    def content_hash(self) -> str:
        """Equal for two versions that say the same thing (what import compares)."""
        parts = [
            self.name,
            self.description,
            self.when_to_use,
            self.instructions,
            self.category,
            ",".join(sorted(self.composes)),
        ]
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]

    @property
    def curated(self) -> bool:
        """Written or imported by a person: evolution may not rewrite it."""
        return self.pinned or self.author == "user" or self.author.startswith("import:")

    @property
    def search_text(self) -> str:
        """What retrieval matches a query against: name, description and when-to-use."""
        words = self.name.replace("_", " ").replace("-", " ")
        return f"{words}. {self.description} {self.when_to_use}".strip()

    def next_version(self, **changes: Any) -> Skill:
        """The following version of this skill (same id), with lineage to this one."""
        stamp = now()
        return replace(
            self,
            **{
                "version": self.version + 1,
                "parent_version": self.version,
                "status": "active",
                "pinned": False,
                "scan": "",
                "created_at": stamp,
                "updated_at": stamp,
                **changes,
            },
        )


# -- validation -------------------------------------------------------------------------------


def safety_problems(text: str) -> list[str]:
    """Why `text` must not become a skill by the hard rules (empty when it may); see
    `metaclaw.skills.safety` for the normalisation and the intent scan that follows."""
    return hard_problems(text)


def validate(skill: Skill, *, max_instruction_chars: int = 4000) -> Skill:
    """The skill with whitespace tidied, or SkillValidationError naming what to fix."""
    name = normalize_name(skill.name)
    if not NAME_RE.match(name):
        raise SkillValidationError(
            f"skill name {skill.name!r}: use 2–64 characters a-z, 0-9, _ or -, from a letter"
        )
    description = " ".join(skill.description.split())
    when = " ".join(skill.when_to_use.split())
    instructions = skill.instructions.strip()
    category = normalize_name(skill.category or "general") or "general"
    if not description:
        raise SkillValidationError(f"skill {name}: description is empty")
    if len(description) > MAX_DESCRIPTION:
        raise SkillValidationError(f"skill {name}: description over {MAX_DESCRIPTION} characters")
    if len(when) > MAX_WHEN:
        raise SkillValidationError(f"skill {name}: when_to_use over {MAX_WHEN} characters")
    if not instructions:
        raise SkillValidationError(f"skill {name}: instructions are empty")
    if len(instructions) > max_instruction_chars:
        raise SkillValidationError(
            f"skill {name}: instructions have {len(instructions)} characters, the limit is "
            f"{max_instruction_chars} (skills.max_instruction_chars)"
        )
    if not CATEGORY_RE.match(category):
        raise SkillValidationError(f"skill {name}: category {skill.category!r} is not a slug")
    if skill.status not in STATUSES:
        raise SkillValidationError(f"skill {name}: status must be one of {STATUSES}")
    problems = safety_problems("\n".join([name, description, when, instructions]))
    if problems:
        raise SkillValidationError(f"skill {name} rejected as unsafe: " + "; ".join(problems))
    return replace(
        skill,
        name=name,
        description=description,
        when_to_use=when,
        instructions=instructions,
        category=category,
        composes=tuple(dict.fromkeys(c for c in skill.composes if c != skill.skill_id)),
    )
