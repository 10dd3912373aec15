"""The held-out evaluation split: which turns are never trained on, so the gate can measure.

Why by **session**, not by turn: turn t+1 of a conversation contains turn t in its prompt, so a
per-turn split trains on the very text it then evaluates. A whole session is either held out or
trainable: the first 32 bits of sha256(`salt:session_id`), read as a fraction of 2^32, below
`deploy.eval_fraction` → held out. Membership is stable (every run, every machine, no stored list
that could be lost) and cheap to decide anywhere (Python here, DuckDB in the trainer's query).

Why also by **prompt digest**: the same prompt arrives in different sessions (a cron agent, an
eval harness, a popular first question). A turn whose prompt digest equals that of any turn in a
held-out session is excluded from training too, so no eval prompt is ever trained on. The digest
is over the normalised text of the whole prompt (the Anthropic `system`, then each message as
`role|text`; ASCII case and runs of whitespace folded) — not only the last user message, which
would make every "yes" or "continue" in any held-out session unusable for training.

Contract for training: the sample builder excludes the turns for which `held_out_sql` holds
(DuckDB, over the `turns` view); `held_out_turn_ids` is the same rule in Python, and a test keeps
the two (and `prompt_digest` / `prompt_digest_sql`) in agreement. Every evaluation records the
split it used (`split_id`), so verdicts made under different splits are never compared unknowingly.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from metaclaw.config import DeploySettings, Settings

HASH_BITS = 32
DIGEST_CHARS = 16
_UPPER, _LOWER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"
_FOLD = str.maketrans(_UPPER, _LOWER)
_EMPTY = hashlib.sha256(b"").hexdigest()[:DIGEST_CHARS]
_SPACE = re.compile(r"[\t\n\f\r ]+")  # exactly RE2's \s class, so DuckDB agrees


def _section(settings: Settings | DeploySettings) -> DeploySettings:
    return settings.deploy if isinstance(settings, Settings) else settings


def split_fraction(key: str, salt: str) -> float:
    """Where a session falls in [0, 1): uniform over keys, fixed for a given salt."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()
    return int(digest[: HASH_BITS // 4], 16) / 2**HASH_BITS


def is_eval_session(session_id: str, settings: Settings | DeploySettings) -> bool:
    """True when every turn of the session belongs to the held-out evaluation set. Pure."""
    cfg = _section(settings)
    return split_fraction(session_id, cfg.split_salt) < cfg.eval_fraction


def eval_session_sql(settings: Settings | DeploySettings, column: str = "session_id") -> str:
    """`is_eval_session` as a DuckDB boolean expression over `column`."""
    cfg = _section(settings)
    salt = cfg.split_salt.replace("'", "''")
    threshold = int(cfg.eval_fraction * 2**HASH_BITS)
    # fraction < f  ⇔  int32bits < f·2^32  ⇔  int32bits < ceil(f·2^32) for integers
    if threshold < cfg.eval_fraction * 2**HASH_BITS:
        threshold += 1
    return (
        f"(CAST(('0x' || substr(sha256('{salt}:' || {column}), 1, {HASH_BITS // 4})) "
        f"AS UBIGINT) < {threshold})"
    )


# ----- prompt digests ---------------------------------------------------------------------


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def prompt_text(request: Mapping[str, Any]) -> str:
    """The normalised prompt text a digest is taken of (empty when there is none)."""
    system = _text(request.get("system"))
    parts = [f"system|{system}\n"] if system else []
    messages = request.get("messages")
    if isinstance(messages, list):
        lines = []
        for m in messages:
            m = m if isinstance(m, dict) else {}
            role = m.get("role") if isinstance(m.get("role"), str) else ""
            lines.append(f"{role}|{_text(m.get('content'))}")
        parts.append("\n".join(lines))
    return _SPACE.sub(" ", "".join(parts).translate(_FOLD)).strip(" ")


def prompt_digest(request: str | Mapping[str, Any] | None) -> str | None:
    """A digest of the request's whole prompt (raw JSON text or parsed); None without text."""
    if isinstance(request, str):
        try:
            request = json.loads(request)
        except ValueError:
            return None
    if not isinstance(request, Mapping):
        return None
    text = prompt_text(request)
    if not text:
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:DIGEST_CHARS]


def _text_sql(value: str) -> str:
    return (
        f"(CASE json_type({value}) WHEN 'VARCHAR' THEN json_extract_string({value}, '$') "
        f"WHEN 'ARRAY' THEN coalesce(array_to_string(list_transform("
        f"TRY_CAST({value} AS JSON[]), lambda p: CASE WHEN json_type(p, '$.text') = 'VARCHAR'"
        f" THEN json_extract_string(p, '$.text') ELSE '' END), ''), '') ELSE '' END)"
    )


def prompt_digest_sql(column: str) -> str:
    """`prompt_digest` as a DuckDB expression over a JSON text column (NULL without text)."""
    system = _text_sql(f"json_extract({column}, '$.system')")
    role = (
        "(CASE WHEN json_type(m, '$.role') = 'VARCHAR' THEN json_extract_string(m, '$.role')"
        " ELSE '' END)"
    )
    content = _text_sql("json_extract(m, '$.content')")
    messages = (
        f"coalesce(array_to_string(list_transform(TRY_CAST(json_extract({column}, "
        f"'$.messages') AS JSON[]), lambda m: {role} || '|' || {content}), chr(10)), '')"
    )
    raw = (
        f"(CASE WHEN {system} = '' THEN '' ELSE 'system|' || {system} || chr(10) END) || {messages}"
    )
    norm = (
        f"trim(regexp_replace(translate({raw}, '{_UPPER}', '{_LOWER}'), "
        r"'[\t\n\f\r ]+', ' ', 'g'), ' ')"
    )
    # the digest of empty text stands for "no prompt" (a 64-bit collision is not a concern)
    return (
        f"(CASE WHEN json_valid({column}) THEN nullif(substr(sha256({norm}), 1, "
        f"{DIGEST_CHARS}), '{_EMPTY}') END)"
    )


# ----- the training predicate -------------------------------------------------------------


def held_out_sql(settings: Settings | DeploySettings, alias: str = "t") -> str:
    """The trainer's predicate over `turns {alias}`: the turn's session is held out, or its
    prompt digest equals that of a turn in a held-out session. Never NULL."""
    cfg = _section(settings)
    if cfg.eval_fraction <= 0:
        return "false"
    own = eval_session_sql(settings, f"{alias}.session_id")
    others = (
        f"SELECT {prompt_digest_sql('h.request')} AS d FROM turns h "
        f"WHERE {eval_session_sql(settings, 'h.session_id')}"
    )
    return (
        f"coalesce({own} OR {prompt_digest_sql(f'{alias}.request')} IN "
        f"(SELECT d FROM ({others}) WHERE d IS NOT NULL), false)"
    )


def held_out_turn_ids(
    turns: Iterable[Mapping[str, Any]], settings: Settings | DeploySettings
) -> set[str]:
    """`held_out_sql` in Python over rows with turn_id, session_id and request. Pure."""
    rows = list(turns)
    held = {r["turn_id"] for r in rows if is_eval_session(r["session_id"], settings)}
    digests = {prompt_digest(r.get("request")) for r in rows if r["turn_id"] in held} - {None}
    return held | {r["turn_id"] for r in rows if prompt_digest(r.get("request")) in digests}


def split_id(settings: Settings | DeploySettings) -> str:
    """A label of the split in force, recorded with every evaluation."""
    cfg = _section(settings)
    return f"session-sha256+prompt/{cfg.split_salt}/{cfg.eval_fraction:g}"
