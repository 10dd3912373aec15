"""SKILL.md interop with upstream MetaClaw and OpenClaw skill folders (pure text ↔ Skill).

Format: `<dir>/<name>/SKILL.md`, YAML front matter between `---` lines with `name`,
`description`, optional `category`, then the markdown body (the instructions). MetaClaw's own
fields (when-to-use, composes, version, id) travel in a one-line `metadata` JSON map, the slot
OpenClaw uses for tool-specific data, so upstream's line-by-line front-matter parser still reads
name/description/category and ignores the rest. Rendering then parsing gives the same skill
content back (`Skill.content_hash` is equal): the round trip the CLI's import/export relies on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metaclaw.skills.model import Skill, SkillValidationError, normalize_name

FILENAME = "SKILL.md"
_FRONT = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|\Z)(.*)\Z", re.S)


@dataclass(frozen=True)
class ParsedSkill:
    skill: Skill
    declared_id: str | None  # the id an export recorded (composes refer to ids)
    composes_names: tuple[str, ...]


def parse(text: str, *, fallback_name: str = "", source: str = "SKILL.md") -> ParsedSkill:
    """A SKILL.md document → Skill (not yet validated); errors name the file and the field."""
    match = _FRONT.match(text.lstrip("\ufeff"))
    if not match:
        raise SkillValidationError(f"{source}: no YAML front matter (a first line '---' and a "
                                   "closing '---' around name/description)")
    try:
        meta = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as exc:
        raise SkillValidationError(f"{source}: front matter is not valid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise SkillValidationError(f"{source}: front matter must be a mapping of name: value")
    name = str(meta.get("name") or fallback_name or "").strip()
    if not name:
        raise SkillValidationError(f"{source}: front matter lacks `name`")
    description = meta.get("description")
    if not isinstance(description, str) or not description.strip():
        raise SkillValidationError(f"{source}: front matter lacks `description`")
    extra = _metaclaw_meta(meta.get("metadata"))
    composes_names = tuple(str(c) for c in extra.get("composes") or [])
    skill = Skill(
        name=normalize_name(name),
        description=description.strip(),
        instructions=match.group(2).strip(),
        when_to_use=str(extra.get("when_to_use") or ""),
        category=str(meta.get("category") or "general"),
    )
    declared = extra.get("id")
    return ParsedSkill(skill, str(declared) if declared else None, composes_names)


def _metaclaw_meta(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return {}
    if isinstance(value, dict) and isinstance(value.get("metaclaw"), dict):
        return value["metaclaw"]
    return {}


def _scalar(value: str) -> str:
    """A one-line YAML scalar, quoted only when plain YAML would misread it."""
    dumped = yaml.safe_dump(value, width=1 << 30, allow_unicode=True, default_flow_style=True)
    return dumped.removesuffix("\n...\n").strip()


def render(skill: Skill, composes_names: list[str] | None = None) -> str:
    """The SKILL.md text of a skill."""
    lines = ["---", f"name: {_scalar(skill.name)}", f"description: {_scalar(skill.description)}"]
    if skill.category and skill.category != "general":
        lines.append(f"category: {_scalar(skill.category)}")
    extra: dict[str, Any] = {"id": skill.skill_id, "version": skill.version}
    if skill.when_to_use:
        extra["when_to_use"] = skill.when_to_use
    if composes_names:
        extra["composes"] = composes_names
    lines.append("metadata: " + json.dumps({"metaclaw": extra}, ensure_ascii=False))
    lines.append("---")
    return "\n".join(lines) + "\n\n" + skill.instructions.strip() + "\n"


def find_skill_files(directory: Path) -> list[Path]:
    """`<dir>/<name>/SKILL.md` files (and `<dir>/SKILL.md` for a single skill), sorted."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory of <name>/SKILL.md folders")
    found = sorted(directory.glob(f"*/{FILENAME}"))
    if (directory / FILENAME).exists():
        found.insert(0, directory / FILENAME)
    return found
