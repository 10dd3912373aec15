"""The evaluation set: held-out ledger prompts plus an optional fixed file of prompts.

Ledger prompts are the requests of recent turns that (a) belong to a held-out session
(`split.is_eval_session`), (b) were scored (they appear in `turn_rewards`, i.e. real traffic that
mattered), (c) completed, and (d) were never trained on — neither the turn (`train_steps.turn_ids`)
nor another turn with the same prompt digest: a belt-and-braces check in case the split settings
changed after training consumed a turn (counted as `skipped.prompt_trained`). The most recent
`deploy.eval_size` distinct prompts are used, newest first, so the gate tracks today's traffic.

Each prompt is rebuilt as the policy saw it: the skills block the proxy injected
(`turns.injected_text`) is put back by `training.render.served_request` — the same function the
trainer renders served turns with, which uses the proxy's own `skills.query.inject*`.

The prompts file (`deploy.prompts_file`) is JSONL, one prompt per line:
`{"messages": [{"role": "user", "content": "…"}], "tools": [...]}` or `{"prompt": "…"}`
(a single user message). Its prompts are always included: a fixed yardstick across candidates.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaclaw.config import Settings
from metaclaw.deploy.split import eval_session_sql, prompt_digest_sql, split_id
from metaclaw.ledger import connect

LEDGER_SQL = """
WITH consumed AS (SELECT DISTINCT unnest(turn_ids) AS turn_id FROM train_steps),
trained AS (SELECT DISTINCT {trained_digest} AS d FROM turns tt
            JOIN consumed k ON k.turn_id = tt.turn_id)
SELECT t.turn_id, CAST(t.request AS VARCHAR) AS request, t.client, r.reward,
       {injected} AS injected,
       coalesce({digest} IN (SELECT d FROM trained WHERE d IS NOT NULL), false) AS trained
FROM turns t
JOIN turn_rewards r ON r.turn_id = t.turn_id
LEFT JOIN consumed c ON c.turn_id = t.turn_id
WHERE c.turn_id IS NULL AND t.status = 'ok' AND t.request IS NOT NULL AND {split}
ORDER BY t.ts_start DESC, t.turn_id
LIMIT {limit}
"""


class PromptsFileError(ValueError):
    """The prompts file cannot be read; the message names the line to fix."""


@dataclass(frozen=True)
class EvalPrompt:
    prompt_id: str  # the turn_id, or file:<hash>
    source: str  # ledger | file
    messages: list[dict[str, Any]]
    tools: list[Any] | None = None
    reward: float | None = None

    @property
    def preview(self) -> str:
        last = next(
            (m for m in reversed(self.messages) if m.get("role") == "user"),
            self.messages[-1] if self.messages else {},
        )
        content = last.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        return " ".join((text or "").split())[:120]


@dataclass
class EvalSet:
    prompts: list[EvalPrompt]
    split: str
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def turn_ids(self) -> list[str]:
        return [p.prompt_id for p in self.prompts if p.source == "ledger"]


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def parse_prompt_line(raw: str, where: str) -> EvalPrompt:
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise PromptsFileError(f"{where}: not JSON ({exc.msg})") from None
    if isinstance(item, dict) and isinstance(item.get("prompt"), str):
        messages = [{"role": "user", "content": item["prompt"]}]
    elif isinstance(item, dict) and isinstance(item.get("messages"), list) and item["messages"]:
        messages = item["messages"]
        if not all(isinstance(m, dict) and "role" in m for m in messages):
            raise PromptsFileError(f"{where}: every message needs a 'role'")
    else:
        raise PromptsFileError(f'{where}: expected {{"messages": [...]}} or {{"prompt": "..."}}')
    tools = item.get("tools") or None
    if tools is not None and not isinstance(tools, list):
        raise PromptsFileError(f"{where}: 'tools' must be a list")
    return EvalPrompt(f"file:{_digest([messages, tools])}", "file", messages, tools)


def load_prompts_file(path: Path) -> list[EvalPrompt]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise PromptsFileError(f"deploy.prompts_file {path} does not exist")
    prompts: dict[str, EvalPrompt] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            prompt = parse_prompt_line(line, f"{path}:{n}")
            prompts.setdefault(prompt.prompt_id, prompt)
    return list(prompts.values())


def _ledger_rows(settings: Settings) -> list[tuple[Any, ...]]:
    cfg = settings.deploy
    con = connect(settings.paths)
    try:
        columns = {row[0] for row in con.execute("DESCRIBE turns").fetchall()}
        # a ledger written before `injected_text` existed has no such column
        injected = "t.injected_text" if "injected_text" in columns else "NULL"
        sql = LEDGER_SQL.format(
            split=eval_session_sql(settings, "t.session_id"),
            digest=prompt_digest_sql("t.request"),
            trained_digest=prompt_digest_sql("tt.request"),
            injected=injected,
            limit=cfg.eval_size * 3,
        )
        return con.execute(sql).fetchall()
    finally:
        con.close()


def ledger_prompts(settings: Settings, skipped: dict[str, int]) -> list[EvalPrompt]:
    """Held-out, scored, never-trained turns, newest first (at most deploy.eval_size), with the
    injected skills block they were served with."""
    from metaclaw.training.render import chat_messages, served_request

    cfg = settings.deploy
    if cfg.eval_fraction <= 0:
        return []
    out: dict[str, EvalPrompt] = {}
    seen_turns: set[str] = set()
    for turn_id, raw, client, reward, injected, trained in _ledger_rows(settings):
        if turn_id in seen_turns:
            continue
        seen_turns.add(turn_id)
        if trained:
            skipped["prompt_trained"] = skipped.get("prompt_trained", 0) + 1
            continue
        try:
            request = json.loads(raw)
            messages = chat_messages(
                served_request(request, injected, anthropic=client == "anthropic")
            )
        except (ValueError, TypeError, AttributeError):
            skipped["unreadable_request"] = skipped.get("unreadable_request", 0) + 1
            continue
        tools = request.get("tools") or None
        key = _digest([messages, tools])
        if key in out:
            skipped["duplicate_prompt"] = skipped.get("duplicate_prompt", 0) + 1
            continue
        out[key] = EvalPrompt(
            turn_id, "ledger", messages, tools, None if reward is None else float(reward)
        )
        if len(out) >= cfg.eval_size:
            break
    return list(out.values())


def build_eval_set(settings: Settings) -> EvalSet:
    skipped: dict[str, int] = {}
    prompts = ledger_prompts(settings, skipped)
    if settings.deploy.prompts_file is not None:
        prompts += load_prompts_file(settings.deploy.prompts_file)
    return EvalSet(prompts, split_id(settings), skipped)
