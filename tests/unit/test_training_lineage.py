"""The learner's resume table (metaclaw.training.lineage), the reward baseline, and what the
proxy records about the sampling a turn was served with (issue 14, faults 1, 3, 6, 7)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from metaclaw.config import Settings
from metaclaw.proxy.capture import TurnDraft
from metaclaw.proxy.completion import Completion, PolicyTrace
from metaclaw.training.history import StepRecord, TrainHistory
from metaclaw.training.lineage import Registry, registry_from_rows, resume_point
from tests.helpers import gate_record


def ok(step: int, parent: int | None) -> StepRecord:
    """Step n trained checkpoint c<n> at state s<n> on top of s<parent> (None: base)."""
    return StepRecord(
        f"id{step}",
        step,
        [f"t{step}"],
        {
            "status": "ok",
            "checkpoint_id": f"c{step}",
            "state_path": f"s{step}",
            "parent_state_path": f"s{parent}" if parent else "base:m",
            "metaclaw_config": {"sha256": "cfg"},
        },
    )


def failed(step: int, parent: int | None, sha: str = "cfg") -> StepRecord:
    return StepRecord(
        f"id{step}",
        step,
        [f"t{step}"],
        {
            "status": "failed",
            "parent_state_path": f"s{parent}" if parent else "base:m",
            "metaclaw_config": {"sha256": sha},
        },
    )


def test_only_tripped_guards_of_a_recorded_verdict_count() -> None:
    reg = registry(("c1", "rejected", ["kl_from_base"]), ("c2", "rejected", []))
    assert reg.states["c1"].guards_tripped == ("kl_from_base",)
    assert reg.states["c2"].guards_tripped == ()
    odd = registry_from_rows([("c3", "rejected", {"guards": [{"name": "x", "tripped": "yes"}]}, 0)])
    assert odd.states["c3"].guards_tripped == ()  # only a real `true` counts


def registry(*events: tuple[str, str] | tuple[str, str, list[str]]) -> Registry:
    rows = []
    for ts, event in enumerate(events):
        metrics = gate_record(event[2]) if len(event) == 3 else None
        rows.append((event[0], event[1], metrics, ts))
    return registry_from_rows(rows)


def resume(steps: list[StepRecord], reg: Registry, **limits: int) -> tuple[str, str | None]:
    r = resume_point(
        steps,
        reg,
        max_unpromoted=limits.get("n", 3),
        stall_after_failures=limits.get("failures", 3),
        stall_after_rejections=limits.get("rejections", 10),
        config_sha="cfg",
    )
    return r.rule, r.state_path


CHAIN = [ok(1, None), ok(2, 1), ok(3, 2)]


@pytest.mark.parametrize(
    "steps, events, expected",
    [
        ([], [], ("fresh", "")),
        (CHAIN[:2], [("c1", "promoted"), ("c2", "candidate")], ("continue", "s2")),
        (CHAIN[:2], [("c1", "promoted"), ("c2", "rejected")], ("continue", "s2")),
        (
            CHAIN[:2],
            [("c1", "promoted"), ("c2", "rejected", ["degenerate"])],
            ("reset_guard", "s1"),
        ),
        (CHAIN, [("c1", "promoted"), ("c2", "candidate"), ("c3", "candidate")], ("continue", "s3")),
        (CHAIN, [("c2", "promoted"), ("c2", "rolled_back")], ("reset_rollback", "")),
        (
            CHAIN,
            [
                ("c1", "promoted"),
                ("c2", "promoted"),
                ("c1", "superseded"),
                ("c2", "rolled_back"),
                ("c1", "promoted"),
            ],
            ("reset_rollback", "s1"),
        ),
        # c3 was trained on c2, then c1 was promoted again by hand: follow the registry
        ([*CHAIN, ok(4, 1)], [("c4", "promoted")], ("continue", "s4")),
        ([*CHAIN, ok(4, 1)], [("c3", "promoted")], ("follow_registry", "s3")),
        (CHAIN, [("c9", "promoted")], ("stalled", None)),
    ],
)
def test_resume_table(
    steps: list[StepRecord], events: list[tuple[str, str]], expected: tuple[str, str | None]
) -> None:
    assert resume(steps, registry(*events)) == expected


def test_the_newest_candidate_is_never_more_than_n_steps_above_the_promoted_one() -> None:
    reg = registry(("c1", "promoted"))
    assert resume(CHAIN, reg, n=3) == ("continue", "s3")
    assert resume(CHAIN, reg, n=2) == ("reset_drift", "s1")
    assert resume(CHAIN, registry(), n=3) == ("reset_drift", "")  # nothing promoted: base


def test_lineage_and_staleness_of_the_resume_state() -> None:
    r = resume_point(
        CHAIN,
        registry(("c1", "promoted")),
        max_unpromoted=3,
        stall_after_failures=3,
        stall_after_rejections=10,
    )
    assert r.lineage == ("c3", "c2", "c1", None)  # a turn's staleness: its index here
    assert r.unpromoted == 2


def test_failures_from_one_state_under_one_config_stall() -> None:
    reg = registry(("c1", "promoted"))
    steps = [ok(1, None), failed(2, 1), failed(3, 1)]
    assert resume(steps, reg, failures=3) == ("continue", "s1")
    assert resume([*steps, failed(4, 1)], reg, failures=3) == ("stalled", None)
    # a config change (e.g. a raised training.max_kl) lifts the stall: a new attempt is due
    assert resume([*steps, failed(4, 1, sha="other")], reg, failures=3) == ("continue", "s1")


def test_rejections_since_the_last_promotion_stall() -> None:
    steps = [ok(1, None), ok(2, 1), ok(3, 1)]
    reg = registry(("c1", "promoted"), ("c2", "rejected"), ("c3", "rejected"))
    assert resume(steps, reg, rejections=3)[0] != "stalled"
    assert resume(steps, reg, rejections=2) == ("stalled", None)
    later = registry(("c2", "rejected"), ("c3", "rejected"), ("c1", "promoted"))
    assert resume(steps, later, rejections=2)[0] != "stalled", "counted since the promotion"


def test_the_baseline_follows_the_current_reward_level() -> None:
    def step(n: int, mean: float) -> StepRecord:
        return StepRecord(f"i{n}", n, [], {"status": "ok", "rl_reward_sum": mean * 4, "rl_n": 4})

    history = TrainHistory(
        [step(i, -1.0) for i in range(10)] + [step(10 + i, 1.0) for i in range(5)]
    )
    all_time_mean = (10 * -1.0 + 5 * 1.0) / 15
    assert history.baseline(0.8) > 0.3 > all_time_mean  # EMA: mostly the recent level
    assert TrainHistory([step(0, 0.6)]).baseline(0.8) == pytest.approx(0.6)  # bias-corrected
    assert TrainHistory().baseline(0.8) == 0.0


def test_the_policy_trace_sampling_parameters_reach_the_turn_row() -> None:
    trace = PolicyTrace.parse(
        {
            "prompt_token_ids": [1],
            "completion_token_ids": [2],
            "completion_logprobs": [-0.1],
            "checkpoint": "c1",
            "temperature": 0.7,
            "top_p": 0.9,
        }
    )
    assert trace is not None
    draft = TurnDraft("s", 0, "openai", "/v1/chat/completions", {"messages": []}, False, "m")
    draft.injected_text = "## Skills\n- be brief"
    row = draft.finish(status="ok", http_status=200, completion=Completion("x", policy=trace))
    assert (row["sampling_temperature"], row["sampling_top_p"]) == (0.7, 0.9)
    assert row["injected_text"] == "## Skills\n- be brief"
    upstream = TurnDraft("s", 0, "openai", "/v1/chat/completions", {}, False, "m").finish(
        status="ok", http_status=200, completion=Completion("x")
    )
    assert upstream["sampling_temperature"] is None and upstream["injected_text"] is None


def test_length_limits_and_the_learners_temperature_are_validated() -> None:
    s = Settings()
    assert s.training.max_seq_len >= s.policy.max_context_tokens
    assert s.deploy.max_prompt_tokens + s.deploy.max_new_tokens <= s.policy.max_context_tokens
    assert s.training.loss_fn in ("ppo", "cispo")  # clipped by default
    with pytest.raises(ValidationError, match=r"training\.max_seq_len"):
        Settings(training={"max_seq_len": 1024}, policy={"max_context_tokens": 4096})
    with pytest.raises(ValidationError, match=r"deploy\.max_prompt_tokens"):
        Settings(deploy={"max_prompt_tokens": 4000, "max_new_tokens": 256})
    with pytest.raises(ValidationError, match="temperature"):
        Settings(training={"temperature": 0.7})
    with pytest.raises(ValidationError, match="max_staleness"):
        Settings(training={"max_staleness": 1, "max_unpromoted_steps": 4})


def test_a_stall_shows_in_the_status_line_and_the_run_report() -> None:
    from metaclaw.training.report import run_markdown, status_line

    stalled = {"status": "stalled", "reason": "3 consecutive steps from this state failed"}
    assert "STALLED" in status_line(stalled) and "3 consecutive" in status_line(stalled)
    ok_ = {
        "status": "ok",
        "checkpoint_id": "c4",
        "lineage": {"checkpoint_id": "c1", "rule": "reset_drift"},
    }
    assert status_line(ok_) == "training: last step ok → c4 (resumed from c1: reset_drift)"
    report = run_markdown(
        [{"status": "stalled", "reason": stalled["reason"], "metrics": {}, "skipped": {}}], []
    )
    assert "TRAINING STALLED" in report and "no turn was consumed" in report
    trained = run_markdown(
        [
            {
                "status": "trained",
                "step": 3,
                "checkpoint_id": "c3",
                "path": "/c3",
                "reason": "",
                "skipped": {},
                "metrics": {
                    "lineage": ok_["lineage"],
                    "routed": {"stale_policy": 2, "truncated": 1},
                },
            }
        ],
        [],
    )
    assert "resumed from `c1` (reset_drift" in trained
    assert "stale_policy 2, truncated 1" in trained
