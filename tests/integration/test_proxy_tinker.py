"""Through the proxy to the Tinker engine, with the official `openai` client: replies (plain,
streamed, tool calls) are served by the Tinker sampler and recorded as on-policy turns; when
Tinker fails, the proxy falls back to the configured upstream and records the turn as the
upstream's, or, with no upstream, the client gets the OpenAI-shaped 503.

Real parts: the proxy process, the policy server app on a socket (in this process), the stub
upstream provider; only the Tinker service is the in-process stand-in.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.helpers import ProxyProcess
from tests.stubs.upstream_server import StubUpstream
from tests.tinker_helpers import TOOLS, Tinkered, tinker_server

POLICY_MODEL = "metaclaw-policy"


def _ask(client: openai.OpenAI, marker: str, **kwargs: Any) -> Any:
    body = {
        "model": POLICY_MODEL,
        "messages": [{"role": "user", "content": f"{marker} hello"}],
        "max_tokens": 10,
        "seed": 5,
    }
    return client.chat.completions.create(**{**body, **kwargs})


def _turns(proxy: ProxyProcess, marker: str) -> list[dict[str, Any]]:
    return proxy.turns(
        f"request::VARCHAR LIKE '%{marker}%'",
        "served_by, prompt_token_ids, completion_token_ids, completion_text, status",
    )


def test_the_proxy_serves_tinker_and_falls_back_to_the_upstream(
    stub: StubUpstream, tmp_path: Path
) -> None:
    with tinker_server(tmp_path / "policy", tinker_sample_timeout_s=10) as policy:
        env = {
            "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
            "METACLAW_UPSTREAM__MODEL": "upstream-model",
            "METACLAW_POLICY__PORT": str(policy.settings.policy.port),
            "METACLAW_PROXY__POLICY_MODELS": f'["{POLICY_MODEL}"]',
            "METACLAW_SKILLS__ENABLED": "false",
        }
        with ProxyProcess(tmp_path / "proxy", env) as proxy:
            client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
            served = _served_by_tinker(policy, proxy, client)
            policy.service.fail_with = ConnectionError("tinker down")
            marker = uuid.uuid4().hex
            plain = _ask(client, marker)
            streamed = list(_ask(client, marker, stream=True))
            turns = _turns(proxy, marker)
    assert served == 3
    assert plain.choices[0].message.content == f"Echo: {marker} hello"  # the stub's echo
    assert plain.model_extra is None or "metaclaw" not in plain.model_extra
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == f"Echo: {marker} hello"
    assert [t["served_by"] for t in turns] == ["upstream", "upstream"]
    assert all(t["prompt_token_ids"] is None and t["status"] == "ok" for t in turns)
    sent = [r["body"] for r in stub.requests() if marker in str(r["body"])]
    assert [b["model"] for b in sent] == ["upstream-model"] * 2  # the upstream's own model


def _served_by_tinker(policy: Tinkered, proxy: ProxyProcess, client: openai.OpenAI) -> int:
    """Plain, streamed and tool-call replies through the proxy, checked against what the
    stand-in sampled; returns how many turns were recorded as the policy's."""
    marker = uuid.uuid4().hex
    plain = _ask(client, marker)
    assert plain.model_extra is None or "metaclaw" not in plain.model_extra  # stripped
    streamed = "".join(
        c.choices[0].delta.content or "" for c in _ask(client, marker, stream=True) if c.choices
    )
    policy.service.replies["base"] = (
        '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>'
    )
    tool = _ask(client, marker, tools=TOOLS, max_tokens=80)
    policy.service.replies.clear()
    calls = tool.choices[0].message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("read_file", '{"path": "a.py"}')
    ]
    turns = _turns(proxy, marker)
    assert [t["served_by"] for t in turns] == ["policy"] * 3
    sampled = [ids for _, ids, _ in policy.service.sample_calls[-3:]]
    assert [t["prompt_token_ids"] for t in turns] == sampled  # exactly what Tinker saw
    assert [t["completion_text"] for t in turns[:2]] == [plain.choices[0].message.content, streamed]
    assert all(t["completion_token_ids"] for t in turns)
    return len(turns)


def test_without_an_upstream_a_tinker_outage_is_the_openai_shaped_503(tmp_path: Path) -> None:
    with tinker_server(tmp_path / "policy") as policy:
        env = {
            "METACLAW_POLICY__PORT": str(policy.settings.policy.port),
            "METACLAW_SKILLS__ENABLED": "false",
        }
        with ProxyProcess(tmp_path / "proxy", env) as proxy:
            client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
            policy.service.fail_with = ConnectionError("tinker down")
            with pytest.raises(openai.InternalServerError) as err:
                _ask(client, uuid.uuid4().hex)
    assert err.value.status_code == 503
    assert err.value.body["code"] == "tinker_unavailable"
    assert "tinker down" in err.value.body["message"]
