"""SKILL.md interop with upstream MetaClaw and OpenClaw skill folders (pure text ↔ Skill).

Format: `<dir>/<name>/SKILL.md`, YAML front matter between `---` lines with `name`,
`description`, optional `category`, then the markdown body (the instructions). MetaClaw's own
fields (when-to-use, composes, version, id) travel in a one-line `metadata` JSON map, the slot
OpenClaw uses for tool-specific data, so upstream's line-by-line front-matter parser still reads
name/description/category and ignores the rest. Rendering then parsing gives the same skill
content back (`Skill.content_hash` is equal): the round trip the CLI's import/export relies on.

A skill folder is untrusted input (skills are shared and downloaded): files are read without
following symlinks and only up to `MAX_FILE_BYTES`; the front matter is YAML without anchors or
aliases (a 317-byte alias bomb expanded to a 2 MB name), at most `MAX_FRONT_MATTER_CHARS`, and
every field must have its type. Export never writes through a symlink either.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from metaclaw.skills.model import Skill, SkillValidationError, normalize_name

FILENAME = "SKILL.md"
MAX_FILE_BYTES = 256 * 1024
MAX_FRONT_MATTER_CHARS = 16 * 1024
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
        raise SkillValidationError(
            f"{source}: no YAML front matter (a first line '---' and a "
            "closing '---' around name/description)"
        )
    meta = _front_matter(match.group(1), source)
    name = _text_field(meta, "name", source) or fallback_name.strip()
    if not name:
        raise SkillValidationError(f"{source}: front matter lacks `name`")
    description = _text_field(meta, "description", source)
    if not description:
        raise SkillValidationError(f"{source}: front matter lacks `description`")
    extra = _metaclaw_meta(meta.get("metadata"))
    composes = extra.get("composes") or []
    if not isinstance(composes, list) or not all(isinstance(c, str) for c in composes):
        raise SkillValidationError(f"{source}: metadata.metaclaw.composes must be a list of names")
    when = extra.get("when_to_use") or ""
    declared = extra.get("id")
    if not isinstance(when, str) or not isinstance(declared, str | None):
        raise SkillValidationError(f"{source}: metadata.metaclaw when_to_use and id are text")
    skill = Skill(
        name=normalize_name(name),
        description=description,
        instructions=match.group(2).strip(),
        when_to_use=when,
        category=_text_field(meta, "category", source) or "general",
    )
    return ParsedSkill(skill, declared or None, tuple(composes))


def _front_matter(text: str, source: str) -> dict[str, Any]:
    """The front matter as a mapping: bounded, and refused when it uses anchors or aliases
    (the only way a few hundred bytes of YAML expand into gigabytes)."""
    if len(text) > MAX_FRONT_MATTER_CHARS:
        raise SkillValidationError(
            f"{source}: front matter over {MAX_FRONT_MATTER_CHARS} characters"
        )
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise SkillValidationError(
                    f"{source}: front matter uses YAML anchors/aliases (&, *); write values out"
                )
        meta = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise SkillValidationError(f"{source}: front matter is not valid YAML: {exc}") from None
    if not isinstance(meta, dict):
        raise SkillValidationError(f"{source}: front matter must be a mapping of name: value")
    return meta


def _text_field(meta: dict[str, Any], key: str, source: str) -> str:
    value = meta.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SkillValidationError(
            f"{source}: front matter `{key}` must be text, not {type(value).__name__}"
        )
    return value.strip()


def read_file(path: Path) -> str:
    """A SKILL.md's text: never through a symlink, at most MAX_FILE_BYTES (ValueError)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if Path(path).is_symlink():
            raise SkillValidationError(
                f"{path}: a symlink; import reads regular files only"
            ) from None
        raise SkillValidationError(f"{path}: cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise SkillValidationError(f"{path}: over {MAX_FILE_BYTES} bytes; not a SKILL.md")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SkillValidationError(f"{path}: not UTF-8 text") from None


def write_file(folder: Path, text: str) -> Path:
    """Write `<folder>/SKILL.md` without following a symlink at the folder or the file: the
    text goes to a new file that then replaces whatever name was there."""
    if folder.is_symlink():
        raise SkillValidationError(f"{folder}: a symlink; export writes into real folders only")
    folder.mkdir(exist_ok=True)
    target = folder / FILENAME
    tmp = folder / f".{FILENAME}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, target)
    return target


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
    found = sorted(p for p in directory.glob(f"*/{FILENAME}") if not p.parent.is_symlink())
    if (directory / FILENAME).exists() or (directory / FILENAME).is_symlink():
        found.insert(0, directory / FILENAME)
    return found
