"""Policy-vs-upstream routing (pure)."""

from __future__ import annotations

from metaclaw.proxy.routing import serve_with_policy, session_fraction


def _route(model: str | None, session: str, **kw: object) -> bool:
    args = {"upstream_configured": True, "policy_models": [], "policy_share": 0.0, **kw}
    return serve_with_policy(model, session, **args)  # type: ignore[arg-type]


def test_no_upstream_means_the_policy_serves_everything() -> None:
    assert _route("gpt", "s", upstream_configured=False)


def test_model_names_route_explicitly() -> None:
    assert _route("metaclaw-policy", "s", policy_models=["metaclaw-policy"])
    assert not _route("gpt-4o", "s", policy_models=["metaclaw-policy"])
    assert not _route(None, "s", policy_models=["metaclaw-policy"])


def test_share_is_stable_per_session_and_close_to_the_target() -> None:
    sessions = [f"session-{i}" for i in range(2000)]
    chosen = [s for s in sessions if _route("gpt", s, policy_share=0.25)]
    assert 0.21 < len(chosen) / len(sessions) < 0.29
    assert all(_route("gpt", s, policy_share=0.25) for s in chosen), "a session never hops"
    assert not any(_route("gpt", s, policy_share=0.0) for s in sessions)
    assert all(_route("gpt", s, policy_share=1.0) for s in sessions)
    assert 0 <= session_fraction("x") < 1
