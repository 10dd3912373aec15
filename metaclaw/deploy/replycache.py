"""Replies of the current policy, kept between gate decisions.

Why: every candidate is compared with the same current policy, on much the same prompts, with
the same seeds, so its replies are the same every time; sampling them again would double the
cost of each decision. A reply is stored under everything that determines it: the policy (its
checkpoint id and path, or the base model's name), the prompt's token ids, the seed and the
sampling parameters. Anything else changes the key, so a stale reply is never reused.

One JSON file per policy under `$METACLAW_HOME/deploy/replies/`, rewritten atomically after
each decision; a lost or corrupt file only costs a resample.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tinker import types

from metaclaw.deploy.sampling import PolicyRef, Reply


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:32]


class ReplyCache:
    """Cached replies of one policy, keyed by (prompt tokens, n, sampling parameters)."""

    def __init__(self, root: Path, policy: PolicyRef, model: str) -> None:
        self.policy = policy
        self.identity = {"checkpoint_id": policy.checkpoint_id, "path": policy.path, "model": model}
        self.file = Path(root) / f"{policy.label}-{_digest(self.identity)[:12]}.json"
        self._entries: dict[str, list[dict[str, Any]]] | None = None
        self._dirty = False
        self.hits = self.misses = 0

    @staticmethod
    def key(prompt: list[int], n: int, params: types.SamplingParams) -> str:
        return _digest(
            {
                "prompt": _digest(prompt),
                "n": n,
                "seed": params.seed,
                "temperature": params.temperature,
                "top_p": params.top_p,
                "top_k": params.top_k,
                "max_tokens": params.max_tokens,
                "stop": params.stop,
            }
        )

    def _load(self) -> dict[str, list[dict[str, Any]]]:
        if self._entries is None:
            try:
                data = json.loads(self.file.read_text())
                ok = isinstance(data, dict) and data.get("identity") == self.identity
                self._entries = dict(data["replies"]) if ok else {}
            except (OSError, ValueError, KeyError, TypeError):
                self._entries = {}
        return self._entries

    def get(self, key: str) -> list[Reply] | None:
        found = self._load().get(key)
        if found is None:
            self.misses += 1
            return None
        self.hits += 1
        return [Reply(list(r["tokens"]), r["text"], r["stop_reason"]) for r in found]

    def put(self, key: str, replies: list[Reply]) -> None:
        self._load()[key] = [
            {"tokens": r.tokens, "text": r.text, "stop_reason": r.stop_reason} for r in replies
        ]
        self._dirty = True

    def save(self) -> None:
        """Write the file atomically (temp file + rename) when anything was added."""
        if not self._dirty:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"identity": self.identity, "replies": self._load()}))
        os.replace(tmp, self.file)
        self._dirty = False
