"""The embedded SmolLM2-135M as judge and critic, under constrained decoding (slow: one model
conversion and a few hundred generated tokens on a real policy server process).

The real `Judge` and `Critic` classes talk to the real policy server through the `openai`
client, on the fixed prompt set of `tests/structured_prompts.py`: every vote is valid, every
diagnosis passes its pydantic model on the first attempt (`retries=0`), and every skill proposal
matches the JSON schema sent. (A proposal can still fail `EvolveAnswer`'s cross-field rule —
"create" without a `skill` — which its JSON schema does not state.) Unconstrained, the same model
gave 0 usable answers on these prompts (bench/structured_output.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest

from metaclaw.config import JudgeSettings, LedgerPaths
from metaclaw.scoring.judge import CallBudget, Judge, JudgeEndpoint
from metaclaw.scoring.prompt import JudgeCase
from metaclaw.serving.constrained import response_format
from metaclaw.serving.launch import start_policy_server
from metaclaw.skills.critic import Critic, CriticEndpoint
from metaclaw.skills.diagnosis import DiagnosisAnswer
from tests.helpers import free_port
from tests.structured_prompts import diagnose_prompts, evolve_prompts, judge_prompts

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # minutes on a loaded 2-core box
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("constrained-home")
    port = free_port()
    env = {
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(home / "none.toml"),
        "METACLAW_POLICY__TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "METACLAW_POLICY__REQUEST_TIMEOUT_S": "1200",
    }
    child = start_policy_server(LedgerPaths(home), port, env=env, timeout_s=900)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        child.stop()


def test_every_judge_vote_of_the_135m_model_is_valid(server: str) -> None:
    settings = JudgeSettings(votes=2, timeout_s=1200, retries=0, structured_output=True)
    cases = [
        JudgeCase(f"t{i}", "s", tuple(p.messages), "user") for i, p in enumerate(judge_prompts())
    ]

    async def run() -> list:
        async with Judge(JudgeEndpoint(server, MODEL), settings) as judge:
            outcomes = await judge.judge_all(cases, CallBudget(100))
            return [outcomes, judge.stats]

    outcomes, stats = asyncio.run(run())
    assert stats.calls == 2 * len(cases) and stats.failed_calls == 0
    assert stats.invalid_votes == 0, [v.error for o in outcomes for v in o.votes]
    assert all(o.verdict is not None for o in outcomes)


def test_every_critic_answer_of_the_135m_model_passes_its_schema(server: str) -> None:
    critic = Critic(
        CriticEndpoint(server, MODEL, "unused"), timeout_s=1200, retries=0, max_calls=20
    )
    diagnoses, proposals = diagnose_prompts(), evolve_prompts()
    with ThreadPoolExecutor(len(diagnoses) + len(proposals)) as pool:  # the server batches them
        answers = pool.map(
            lambda p: critic.ask(p.messages[0]["content"], p.messages[1]["content"], p.schema),
            diagnoses,
        )
        texts = pool.map(
            lambda p: critic._complete(
                p.messages[0]["content"], p.messages[1]["content"], p.schema, None
            ),
            proposals,
        )
        answers, texts = list(answers), list(texts)
    assert critic.invalid == 0
    assert all(isinstance(a, DiagnosisAnswer) for a in answers)
    for prompt, text in zip(proposals, texts, strict=True):
        sent = response_format(
            prompt.schema.model_json_schema(), prompt.schema.__name__, critic.max_tokens
        )
        jsonschema.validate(json.loads(text), sent["json_schema"]["schema"])
