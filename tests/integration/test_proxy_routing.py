"""Routing through the running proxy: by model name and by session share to our policy server
(a second stub process stands in for it), and an Azure OpenAI deployment as the upstream."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import openai

from tests.helpers import ProxyProcess
from tests.stubs.azure_server import AzureStub
from tests.stubs.upstream_server import StubUpstream


def _hits(stub: StubUpstream, marker: str) -> int:
    return sum(marker in json.dumps(r["body"]) for r in stub.requests())


def test_policy_models_and_share_route_to_the_policy(stub: StubUpstream, tmp_path: Path) -> None:
    with StubUpstream() as policy:
        env = {
            "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
            "METACLAW_UPSTREAM__MODEL": "upstream-model",
            "METACLAW_POLICY__PORT": str(policy.port),
            "METACLAW_PROXY__POLICY_MODELS": '["metaclaw-policy"]',
        }
        with ProxyProcess(tmp_path / "a", env) as proxy:
            client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
            marker = uuid.uuid4().hex
            client.chat.completions.create(
                model="metaclaw-policy",
                messages=[{"role": "user", "content": f"{marker} [[policy:ckpt-3]]"}],
            )
            client.chat.completions.create(
                model="gpt", messages=[{"role": "user", "content": f"{marker} other"}]
            )
            assert _hits(policy, marker) == 1 and _hits(stub, marker) == 1
            sent = next(r for r in policy.requests() if marker in json.dumps(r["body"]))["body"]
            assert sent["model"] == "metaclaw-policy", "the upstream model pin is not applied"
            served = {t["served_by"] for t in proxy.turns(f"request::VARCHAR LIKE '%{marker}%'")}
            assert served == {"policy", "upstream"}

        share = {
            **env,
            "METACLAW_PROXY__POLICY_MODELS": "[]",
            "METACLAW_PROXY__POLICY_SHARE": "0.5",
        }
        with ProxyProcess(tmp_path / "b", share) as proxy:
            client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
            marker = uuid.uuid4().hex
            for i in range(20):
                for _ in range(2):  # two turns of one session go to the same side
                    client.chat.completions.create(
                        model="gpt",
                        user=f"s{i}-{marker}",
                        messages=[{"role": "user", "content": f"{marker} q{i}"}],
                    )
            to_policy, to_upstream = _hits(policy, marker), _hits(stub, marker)
            assert to_policy + to_upstream == 40
            assert 4 <= to_policy <= 36 and to_policy % 2 == 0


def test_azure_deployment_as_the_upstream(tmp_path: Path) -> None:
    with AzureStub(key="azure-key") as azure:
        env = {
            "METACLAW_AZURE__DEPLOYMENT": "gpt-az",
            "METACLAW_AZURE__USE_FOR": '["upstream"]',
            "AZURE_OPENAI_ENDPOINT": azure.url,
            "AZURE_OPENAI_API_KEY": "azure-key",
        }
        with ProxyProcess(tmp_path / "h", env) as proxy:
            client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
            reply = client.chat.completions.create(
                model="anything", messages=[{"role": "user", "content": "hi azure"}]
            )
            assert reply.choices[0].message.content
            sent = azure.requests()[-1]
            assert "/openai/deployments/gpt-az/chat/completions" in sent["path"]
            assert proxy.turns()[0]["served_by"] == "upstream"
