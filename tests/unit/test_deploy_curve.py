"""The learning curve read from a real ledger: users' rewards per served policy, oldest first,
with the gate's verdict; replayed turns and upstream turns are not any policy's."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from metaclaw.config import LedgerPaths
from metaclaw.deploy.curve import bar, curve_markdown, load_curve
from metaclaw.ledger import append_rows


def _turn(paths: LedgerPaths, ts: int, checkpoint: str | None, reward: float | None, **kw) -> None:
    turn_id = uuid.uuid4().hex
    row = {
        "turn_id": turn_id,
        "session_id": turn_id,
        "turn_index": 0,
        "ts_start": ts,
        "ts_end": ts + 1,
        "status": "ok",
        "served_by": "policy",
        "policy_checkpoint": checkpoint,
        "source": "live",
        **kw,
    }
    append_rows(paths.wal, "turns", [row])
    if reward is not None:
        feedback = {"feedback_id": uuid.uuid4().hex, "turn_id": turn_id, "value": reward}
        append_rows(paths.wal, "feedback", [{**feedback, "ts": ts + 2}])


def _verdict(paths: LedgerPaths, checkpoint: str, status: str, ts: int, wins: int) -> None:
    metrics = {"test": {"wins": wins, "losses": 1, "ties": 3}}
    append_rows(
        paths.wal,
        "checkpoints",
        [
            {
                "event_id": f"{checkpoint}-{status}",
                "checkpoint_id": checkpoint,
                "step": 1,
                "backend": "local",
                "path": f"/ckpt/{checkpoint}",
                "status": status,
                "eval_metrics": json.dumps(metrics),
                "reason": "gate",
                "ts": ts,
            }
        ],
    )


def test_rewards_per_served_policy_in_the_order_they_served(tmp_path: Path) -> None:
    paths = LedgerPaths(tmp_path)
    for i, reward in enumerate([-1.0, -1.0, 1.0, None]):
        _turn(paths, 100 + i, None, reward)
    _verdict(paths, "ckpt-1", "promoted", 200, wins=9)
    for i, reward in enumerate([1.0, 1.0, -1.0]):
        _turn(paths, 300 + i, "ckpt-1", reward)
    _turn(paths, 50, "ckpt-1", 1.0, source="backfill:openai")  # replayed: not served by it
    _turn(paths, 60, None, -1.0, served_by="upstream")  # the upstream's, not a policy's
    points = load_curve(paths)
    assert [p.checkpoint for p in points] == ["base", "ckpt-1"]
    base, ckpt = points
    assert (base.turns, base.rated, base.status) == (4, 3, None)
    assert abs(base.mean_reward + 1 / 3) < 1e-9
    assert (ckpt.turns, ckpt.rated, ckpt.status) == (3, 3, "promoted")
    assert abs(ckpt.mean_reward - 1 / 3) < 1e-9
    assert (ckpt.wins, ckpt.losses, ckpt.ties) == (9, 1, 3)
    text = curve_markdown(points)
    assert "| `ckpt-1` | 3 (3) | +0.33 |" in text and "promoted (9–1–3)" in text


def test_bars_span_the_reward_range() -> None:
    assert bar(-1.0, 10) == "░" * 10
    assert bar(1.0, 10) == "█" * 10
    assert bar(0.0, 10) == "█" * 5 + "░" * 5
    assert bar(None, 4) == "····"
    assert bar(7.0, 4) == "████"  # out of range is clamped, not a longer bar


def test_an_empty_ledger_says_so(tmp_path: Path) -> None:
    assert "no turns served by the local policy yet" in curve_markdown(
        load_curve(LedgerPaths(tmp_path))
    )
