"""The `pipeline` flow end to end under the Prefect harness, with stand-ins at every network
boundary (a scripted critic, a pairwise judge with a known taste) and the tiny local model:
seeded turns become rewards, a diagnosis, a skill, a train step and a deploy decision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metaclaw.config import LedgerPaths, Settings
from tests.deploy_helpers import LORA_RANK, eval_turn_ids, seed_turns
from tests.helpers import free_port, rows
from tests.stubs.critic_server import StubCritic
from tests.stubs.deploy_server import PairwiseJudgeStub
from tests.tiny_model import save_tiny_model

torch.set_num_threads(1)

DIAGNOSIS = {
    "root_cause_category": "ignored_instruction",
    "explanation": "The user asked for a short answer and got an unrelated reply.",
    "evidence": [{"quote": "ok", "note": "does not answer"}],
}
SKILL = {
    "action": "create",
    "rationale": "no skill covers this",
    "skill": {
        "name": "answer_the_question_asked",
        "category": "conversation",
        "description": "Answer the user's actual question before anything else.",
        "when_to_use": "Every factual question.",
        "instructions": "1. Restate the question to yourself.\n2. Answer it directly in one line.",
    },
}


@pytest.mark.slow
def test_pipeline_runs_the_whole_loop(
    prefect_harness: str, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.pipeline import pipeline_flow

    tiny = save_tiny_model(tmp_path / "model")
    with PairwiseJudgeStub("prefer:Paris") as judge, StubCritic() as critic:
        env = {
            "TRAINING__BASE_MODEL": str(tiny),
            "TRAINING__LORA_RANK": str(LORA_RANK),
            "TRAINING__DEVICE": "cpu",
            "TRAINING__BATCH_SIZE": "2",
            "JUDGE__BASE_URL": judge.base_url,
            "JUDGE__MODEL": "stub-pairwise",
            "JUDGE__VOTES": "1",
            "JUDGE__RETRIES": "0",
            "CRITIC__BASE_URL": critic.base_url + "/v1",
            "CRITIC__MODEL": "critic-stub",
            "POLICY__PORT": str(free_port()),
            "DEPLOY__MAX_NEW_TOKENS": "12",
            "DEPLOY__MIN_EVAL_PROMPTS": "6",
            "DEPLOY__EVAL_FRACTION": "0.5",
            "DEPLOY__MAX_KL": "1000",
        }
        for key, value in env.items():
            monkeypatch.setenv(f"METACLAW_{key}", value)
        settings = Settings()
        paths = LedgerPaths(home)
        seed_turns(paths, eval_turn_ids(settings, 8))  # held out: the deploy gate's prompts
        # to learn: prompts of their own (a held-out prompt is never trained on, in any session)
        seed_turns(
            paths,
            eval_turn_ids(settings, 4, held_out=False),
            [f"Teach me fact {i}." for i in range(4)],
            reward=1.0,
        )
        failed = eval_turn_ids(settings, 1, held_out=False)
        seed_turns(paths, failed, ["Do the thing I asked."], reward=-1.0)  # a failure to diagnose
        critic.script(
            {"match": "turn_id", "content": json.dumps(DIAGNOSIS)},
            {"match": "ignored_instruction", "content": json.dumps(SKILL)},
        )

        results = pipeline_flow()

    assert set(results) == {"ingest", "score", "diagnose", "evolve", "train", "deploy"}
    assert rows(paths, "SELECT count(*) AS n FROM turn_rewards") == [{"n": 13}]
    (diagnosis,) = rows(paths, "SELECT turn_ids, root_cause_category FROM diagnoses")
    assert diagnosis == {"turn_ids": failed, "root_cause_category": "ignored_instruction"}
    assert rows(paths, "SELECT event FROM skill_events") == [{"event": "created"}]
    steps = rows(paths, "SELECT turn_ids FROM train_steps")
    assert len(steps) == 1 and not set(steps[0]["turn_ids"]) & set(failed)
    assert results["deploy"]["status"] in {"promoted", "rejected"}, results["deploy"]
    assert results["deploy"]["pairs"] >= 6
