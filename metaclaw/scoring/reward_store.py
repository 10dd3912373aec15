"""Reward model versions on disk: `METACLAW_HOME/reward_models/<name>.npz` + `<name>.json`,
and `current.json` naming the one in force.

Why files and not a ledger table: a model is a few hundred kilobytes of arrays, read whole by
every score batch; its figures travel with it in the JSON. Every write is temp + rename, so a
reader never sees half a model, and old versions stay for audit (their ids are on reward rows).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from metaclaw.scoring.reward_metrics import HoldoutReport
from metaclaw.scoring.reward_model import LogisticModel, dumps, loads

CURRENT = "current.json"


@dataclass
class ModelInfo:
    """One trained version: its identity, what it learnt from, and its held-out figures."""

    version: str  # rm/<feature version>/<digest>: recorded as the rows' scorer_version
    trained_at: float
    labels: int  # labels in the ledger when it was trained (the retrain trigger counts from it)
    train_turns: int
    seconds: float
    sources: dict[str, int] = field(default_factory=dict)  # training labels by source
    # training judge labels by their panel's lead ("3": 3–0, "1": 2–1 or one vote), which
    # sets their weight (adaptive.decisiveness)
    judge_margins: dict[str, int] = field(default_factory=dict)
    holdout: HoldoutReport | None = None

    @property
    def file_stem(self) -> str:
        return self.version.removeprefix("rm/").replace("/", "-")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["holdout"] = self.holdout.to_dict() if self.holdout else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        holdout = data.get("holdout")
        return cls(**{**data, "holdout": HoldoutReport.from_dict(holdout) if holdout else None})


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def save(directory: Path, model: LogisticModel, info: ModelInfo) -> None:
    """Store a version and make it current (model first, pointer last)."""
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / f"{info.file_stem}.npz", dumps(model))
    meta = orjson.dumps(info.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    _write(directory / f"{info.file_stem}.json", meta)
    _write(directory / CURRENT, orjson.dumps({"version": info.version}))


def current_info(directory: Path) -> ModelInfo | None:
    """The version in force, or None before the first model."""
    try:
        version = orjson.loads((directory / CURRENT).read_bytes())["version"]
    except (FileNotFoundError, orjson.JSONDecodeError, KeyError, TypeError):
        return None
    stem = ModelInfo(version, 0.0, 0, 0, 0.0).file_stem
    try:
        return ModelInfo.from_dict(orjson.loads((directory / f"{stem}.json").read_bytes()))
    except FileNotFoundError:
        return None


def load_model(directory: Path, info: ModelInfo) -> LogisticModel:
    return loads((directory / f"{info.file_stem}.npz").read_bytes())
