"""Human-readable summaries of training runs (Prefect artifacts, CLI output); pure formatting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float | None]) -> str:
    """One character per value, scaled between the series' min and max; gaps as '·'."""
    present = [v for v in values if v is not None]
    if not present:
        return ""
    low, high = min(present), max(present)
    span = high - low
    out = []
    for v in values:
        if v is None:
            out.append("·")
        elif span == 0:
            out.append(BARS[len(BARS) // 2])
        else:
            out.append(BARS[min(len(BARS) - 1, int((v - low) / span * (len(BARS) - 1) + 0.5))])
    return "".join(out)


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def run_markdown(outcomes: Sequence[dict[str, Any]], history: Sequence[dict[str, Any]]) -> str:
    """This run's steps (or why none ran) and the reward/loss curve over every step so far."""
    lines = ["## Train", ""]
    for o in outcomes:
        m = o.get("metrics") or {}
        if o["status"] == "trained":
            lines.append(
                f"- step **{o['step']}** trained on {m.get('n_samples')} turns "
                f"({m.get('n_rl')} RL, {m.get('n_sft')} SFT, {m.get('tokens')} tokens): "
                f"loss {_fmt(m.get('loss'))}, KL {_fmt(m.get('kl'))}, reward "
                f"{_fmt(m.get('reward_mean'))} → candidate `{o.get('checkpoint_id')}` at "
                f"`{o.get('path')}`"
            )
        elif o["status"] == "stalled":
            lines.append(f"- **TRAINING STALLED**: {o['reason']} (no turn was consumed)")
        elif o["status"] == "failed":
            lines.append(
                f"- step **{o['step']}** FAILED: {o['reason']} (nothing saved; its "
                f"{m.get('n_samples')} turns are quarantined)"
            )
        else:
            lines.append(f"- no step: {o['reason']}")
        lineage = m.get("lineage") or {}
        if o["status"] in ("trained", "failed") and lineage:
            lines.append(
                f"  - resumed from `{lineage.get('checkpoint_id') or 'base model'}` "
                f"({lineage.get('rule')}: {lineage.get('reason')})"
            )
        if m.get("routed"):
            routed = ", ".join(f"{k} {v}" for k, v in sorted(m["routed"].items()))
            lines.append(f"  - policy turns routed off-policy / prompts cut: {routed}")
        if o.get("skipped"):
            skipped = ", ".join(f"{k} {v}" for k, v in sorted(o["skipped"].items()))
            lines.append(f"  - skipped turns: {skipped}")
    ok = [h for h in history if h.get("status") == "ok"]
    if ok:
        rewards = [h.get("reward_mean") for h in ok]
        losses = [h.get("loss") for h in ok]
        lines += [
            "",
            f"### Curve over {len(ok)} step(s) (steps {ok[0]['step']}–{ok[-1]['step']})",
            "",
            f"- reward mean `{sparkline(rewards)}` last {_fmt(rewards[-1])}",
            f"- loss        `{sparkline(losses)}` last {_fmt(losses[-1])}",
            "",
            "| step | status | loss | reward mean | KL | tokens | checkpoint |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {h['step']} | {h.get('status')} | {_fmt(h.get('loss'))} | "
            f"{_fmt(h.get('reward_mean'))} | {_fmt(h.get('kl'))} | {_fmt(h.get('tokens'))} | "
            f"{h.get('checkpoint_id') or '–'} |"
            for h in history[-50:]
        ]
    return "\n".join(lines)


def status_line(latest: dict[str, Any] | None) -> str:
    """One line for `metaclaw status` from the newest `train_steps` row's metrics: a stall
    must be visible where people look, not only in a log."""
    if latest is None:
        return "training: no step yet"
    status = latest.get("status")
    lineage = latest.get("lineage") or {}
    if status == "stalled":
        return f"training: [red]STALLED[/red] — {latest.get('reason')}"
    where = lineage.get("checkpoint_id") or "base model"
    how = f" (resumed from {where}: {lineage.get('rule')})" if lineage else ""
    if status == "failed":
        return f"training: last step [yellow]failed[/yellow] — {latest.get('reason')}{how}"
    return f"training: last step ok → {latest.get('checkpoint_id')}{how}"
