"""Helpers for the skills tests: a shared embedding cache, settings for a temp home, ledger seeds.

The static embedding table is built once per test session into a shared directory
(`skills.embeddings_dir`), so each test's fresh METACLAW_HOME does not rebuild it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

from metaclaw.config import Settings
from metaclaw.ledger import append_rows
from metaclaw.ledger.records import now_micros
from metaclaw.skills.model import Skill, validate

EMBEDDINGS = Path(tempfile.gettempdir()) / f"metaclaw-test-embeddings-{os.getuid()}"

SKILLS: dict[str, tuple[str, str, str]] = {
    # name: (description, when to use, instructions)
    "debug_python_exceptions": (
        "Debug Python exceptions and tracebacks.",
        "A Python script crashes with an error or traceback.",
        "1. Read the traceback bottom-up.\n2. Reproduce the exception.\n3. Fix the root cause.",
    ),
    "write_sql_queries": (
        "Write correct SQL queries with joins and aggregates.",
        "The user needs a database query, a join or a count per group.",
        "Check the schema first, use explicit JOINs, test on a small sample.",
    ),
    "git_merge_conflicts": (
        "Resolve git merge conflicts safely.",
        "git reports CONFLICT after a merge, pull or rebase.",
        "Read both sides, keep the intent of each change, then run the tests.",
    ),
    "translate_text": (
        "Translate text between languages keeping tone and formatting.",
        "The user asks for a translation into another language.",
        "Keep names and code untouched; translate idioms by meaning, not word by word.",
    ),
    "schedule_meetings": (
        "Schedule meetings across time zones.",
        "The user wants to set up a call or meeting with several people.",
        "Confirm time zones, attendees and duration before proposing slots.",
    ),
    "handle_ambiguous_queries": (
        "Ask a clarifying question when a request is ambiguous or underspecified.",
        "The request could mean several different things.",
        "Name the two most likely readings and ask which one the user means.",
    ),
}


def skills_settings(home: Path, **overrides: Any) -> Settings:
    """Settings for a temp home with the shared embedding cache (no env, no TOML file)."""
    skills = {
        "embeddings_dir": EMBEDDINGS,
        "refresh_interval_s": 0.0,
        **overrides.pop("skills", {}),
    }
    return Settings(home=home, skills=skills, _env_file=None, **overrides)


def make_skill(name: str, **changes: Any) -> Skill:
    description, when, instructions = SKILLS[name]
    fields = {
        "name": name,
        "description": description,
        "when_to_use": when,
        "instructions": instructions,
        **changes,
    }
    return validate(Skill(**fields))


def turn_id(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def seed_turn(
    paths: Any,
    *,
    session: str,
    index: int,
    user: str,
    reply: str,
    history: list[dict[str, Any]] | None = None,
    injected: list[str] | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    ts: int | None = None,
    skill_set_version: int | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """One OpenAI-style turn in the ledger; returns its id and the conversation after it."""
    messages = [*(history or []), {"role": "user", "content": user}]
    tid = turn_id(f"{session}/{index}/{user}")
    append_rows(
        paths.wal,
        "turns",
        [
            {
                "turn_id": tid,
                "session_id": session,
                "turn_index": index,
                "ts_start": ts or now_micros(),
                "ts_end": ts or now_micros(),
                "client": "openai",
                "endpoint": "/v1/chat/completions",
                "request": {"model": "m", "messages": messages},
                "injected_skills": injected or [],
                "skill_set_version": skill_set_version,
                "served_by": "upstream",
                "model": "m",
                "completion_text": reply,
                "tool_calls": tool_calls,
                "finish_reason": "tool_calls" if tool_calls else "stop",
                "status": "ok",
                "source": "live",
            }
        ],
    )
    after = [
        *messages,
        {
            "role": "assistant",
            "content": reply,
            **({"tool_calls": tool_calls} if tool_calls else {}),
        },
    ]
    return tid, after


def seed_feedback(paths: Any, turn: str, value: float) -> None:
    """Explicit feedback on a turn: `turn_rewards.reward` = value (explicit ranks first)."""
    append_rows(
        paths.wal,
        "feedback",
        [
            {
                "feedback_id": turn_id(f"fb/{turn}/{value}"),
                "turn_id": turn,
                "value": value,
                "ts": now_micros(),
            }
        ],
    )
