"""The train step against a real ledger (WAL + DuckDB), a real model, and the Prefect harness.

Turns are seeded the way the proxy writes them; on-policy ones are sampled from the tiny model
itself so their logprobs are genuine. Rewards come through the scoring contract: explicit
feedback on a turn gives `turn_rewards.reward` = its value.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from tinker import types

from metaclaw.config import LedgerPaths, Settings
from metaclaw.ledger import append_rows
from metaclaw.ledger.records import now_micros
from metaclaw.serving.chat import render_prompt
from metaclaw.training.local import LocalBackend
from metaclaw.training.trainer import Trainer
from tests.helpers import rows
from tests.stubs.training_fake import BigramBackend
from tests.stubs.training_server import TeacherStub, teacher_logprob
from tests.tiny_model import build_tokenizer, save_tiny_model

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def sampler(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LocalBackend:
    """The base policy (fresh LoRA = base weights) that 'served' the seeded turns."""
    return LocalBackend(
        tiny_dir, checkpoint_dir=tmp_path_factory.mktemp("sampler-ckpt"), lora_rank=4
    )


class Seeder:
    """Writes turns and explicit feedback into a ledger, oldest first."""

    def __init__(self, paths: LedgerPaths) -> None:
        self.paths = paths
        self.n = 0

    def _row(self, **fields: Any) -> dict[str, Any]:
        self.n += 1
        ts = now_micros() + self.n
        return {
            "turn_id": uuid.uuid4().hex,
            "session_id": f"s{self.n}",
            "turn_index": 0,
            "ts_start": ts,
            "ts_end": ts + 10,
            "client": "openai",
            "endpoint": "/v1/chat/completions",
            "status": "ok",
            "http_status": 200,
            "source": "live",
            **fields,
        }

    def policy(
        self,
        backend: Any,
        rewards: list[float | None],
        *,
        version: int | None = None,
        corrupt: float | None = None,
        checkpoint: str | None = None,
        **fields: Any,
    ) -> list[str]:
        """Policy-served turns sampled from `backend` (served as `checkpoint`; None: the base
        model, as the policy server reports it); `corrupt` overwrites their logprobs."""
        out = []
        for reward in rewards:
            prompt = [1, 20 + self.n % 30, 3, 4 + self.n % 7]
            seq = backend.sample(
                types.ModelInput.from_ints(prompt),
                1,
                types.SamplingParams(max_tokens=6, seed=self.n),
            ).sequences[0]
            logprobs = [corrupt] * len(seq.tokens) if corrupt is not None else seq.logprobs
            row = self._row(
                **{
                    "served_by": "policy",
                    "model": "policy",
                    "policy_checkpoint": checkpoint,
                    "request": json.dumps({"messages": [{"role": "user", "content": "q"}]}),
                    "prompt_token_ids": prompt,
                    "completion_token_ids": seq.tokens,
                    "completion_logprobs": logprobs,
                    "skill_set_version": version,
                    "completion_text": "…",
                    "sampling_temperature": 1.0,
                    "sampling_top_p": 1.0,
                    **fields,
                }
            )
            out.append(self.add(row, reward))
        return out

    def upstream(self, rewards: list[float], **fields: Any) -> list[str]:
        out = []
        for reward in rewards:
            request = {
                "model": "gpt",
                "messages": [{"role": "user", "content": f"Question {self.n}?"}],
            }
            row = self._row(
                served_by="upstream",
                model="gpt",
                request=json.dumps(request),
                completion_text=f"Answer {self.n}.",
                **fields,
            )
            out.append(self.add(row, reward))
        return out

    def conversations(
        self,
        backend: Any,
        n: int,
        *,
        correct: int,
        correction: str,
        reward: float | None = None,
    ) -> list[str]:
        """`n` one-question sessions whose replies `backend` sampled (rendered as the policy
        server renders them, rated `reward`); the user corrects the first `correct` of them in
        the next turn with `correction`. Returns the corrected turns' ids."""
        tokenizer = backend.get_tokenizer()
        corrected = []
        for i in range(n):
            messages = [{"role": "user", "content": f"What is {i} plus {i}?"}]
            text = render_prompt(tokenizer, messages, None)
            prompt = [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
            seq = backend.sample(
                types.ModelInput.from_ints(prompt), 1, types.SamplingParams(max_tokens=6, seed=i)
            ).sequences[0]
            reply = tokenizer.decode(seq.tokens, skip_special_tokens=True)
            turn = self._row(
                served_by="policy",
                model="policy",
                request=json.dumps({"messages": messages}),
                prompt_token_ids=prompt,
                completion_token_ids=seq.tokens,
                completion_logprobs=seq.logprobs,
                completion_text=reply,
                sampling_temperature=1.0,
                sampling_top_p=1.0,
            )
            self.add(turn, reward)
            if i >= correct:
                continue
            corrected.append(turn["turn_id"])
            followup = [
                *messages,
                {"role": "assistant", "content": reply},
                {"role": "user", "content": correction},
            ]
            nxt = self._row(
                served_by="upstream",
                model="gpt",
                request=json.dumps({"messages": followup}),
                completion_text="Sorry.",
            )
            nxt.update(session_id=turn["session_id"], turn_index=1, ts_start=turn["ts_end"] + 5)
            self.add(nxt, None)
        return corrected

    def add(self, row: dict[str, Any], reward: float | None) -> str:
        append_rows(self.paths.wal, "turns", [row])
        if reward is not None:
            append_rows(
                self.paths.wal,
                "feedback",
                [
                    {
                        "feedback_id": uuid.uuid4().hex,
                        "turn_id": row["turn_id"],
                        "value": reward,
                        "ts": row["ts_end"] + 1,
                    }
                ],
            )
        return row["turn_id"]


def steps(paths: LedgerPaths) -> list[dict[str, Any]]:
    found = rows(paths, "SELECT step, step_id, turn_ids, metrics FROM train_steps ORDER BY step")
    return [{**r, "metrics": json.loads(r["metrics"])} for r in found]


def candidates(paths: LedgerPaths) -> list[dict[str, Any]]:
    return rows(paths, "SELECT checkpoint_id, step, path, status FROM checkpoints ORDER BY step")


def settings_for(home: Path, eval_fraction: float = 0.0, **training: Any) -> Settings:
    """Tiny-model training settings; no held-out split unless asked (exact counts in tests)."""
    return Settings(
        home=home,
        deploy={"eval_fraction": eval_fraction},
        training={"lora_rank": 4, "batch_size": 4, "learning_rate": 1e-3, **training},
    )


def dir_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


# -- the flow under Prefect ---------------------------------------------------------------


@pytest.mark.slow
def test_train_flow_trains_new_turns_once(
    prefect_harness: str,
    home: Path,
    tiny_dir: Path,
    sampler: LocalBackend,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.train import train_flow

    for key, value in {
        "BASE_MODEL": str(tiny_dir),
        "BATCH_SIZE": "4",
        "LORA_RANK": "4",
        "LEARNING_RATE": "1e-3",
    }.items():
        monkeypatch.setenv(f"METACLAW_TRAINING__{key}", value)
    monkeypatch.setenv("METACLAW_DEPLOY__EVAL_FRACTION", "0")
    paths = LedgerPaths(home)
    seed = Seeder(paths)
    first = seed.policy(sampler, [1.0, -1.0, 1.0, -1.0, 0.5, 0.5])

    result = train_flow()
    assert result["steps"] == [1] and result["failed"] == []
    (s1,) = steps(paths)
    assert sorted(s1["turn_ids"]) == sorted(first[:4])  # the oldest micro-batch
    m = s1["metrics"]
    assert m["status"] == "ok" and m["n_rl"] == 4 and m["n_sft"] == 0
    assert m["reward_mean"] == pytest.approx(0.0) and m["tokens"] > 0
    assert abs(m["kl"]) < 1e-3  # the turns were sampled from these very weights
    assert m["config"]["batch_size"] == 4 and "tinker_api_key" not in m["config"]
    (c1,) = candidates(paths)
    assert c1["status"] == "candidate" and c1["checkpoint_id"] == m["checkpoint_id"]
    ckpt = Path(c1["path"])
    assert ckpt == home / "checkpoints" / c1["checkpoint_id"]
    assert {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt"} <= {
        p.name for p in ckpt.iterdir()
    }

    again = train_flow()  # two turns left < one micro-batch: nothing is written
    assert again["steps"] == [] and again["outcomes"][0]["status"] == "idle"
    assert len(steps(paths)) == 1 and len(candidates(paths)) == 1

    more = seed.policy(sampler, [1.0, -0.5])
    result = train_flow()
    assert result["steps"] == [2]
    s2 = steps(paths)[1]
    assert sorted(s2["turn_ids"]) == sorted(first[4:] + more)
    assert not set(s2["turn_ids"]) & set(s1["turn_ids"])  # never trained twice
    assert s2["metrics"]["parent_state_path"] == m["state_path"]  # resumed from step 1
    assert s2["metrics"]["baseline"] == pytest.approx(0.0)  # mean reward of step 1's turns

    async def read() -> tuple[list[Any], Any]:
        async with get_client() as client:
            found = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["train-report"]))
            )
            limit = await client.read_global_concurrency_limit_by_name("metaclaw-training")
            return found, limit

    artifacts, limit = asyncio.run(read())
    assert limit.limit == 1
    latest = max(artifacts, key=lambda a: a.created)
    assert "step **2** trained on 4 turns" in latest.data and "Curve over 2 step(s)" in latest.data


# -- the trainer against the ledger (no Prefect needed) -------------------------------------


def test_off_policy_turns_never_reach_importance_sampling(home: Path) -> None:
    tok = build_tokenizer()
    fake = BigramBackend(
        len(tok), checkpoint_dir=home / "checkpoints", tokenizer=tok, eos_token_id=tok.eos_token_id
    )
    paths = LedgerPaths(home)
    seed = Seeder(paths)
    on = seed.policy(fake, [1.0, -1.0])
    # upstream turns, one carrying made-up logprobs, one backfilled "policy" turn, one bad one
    made_up = {
        "prompt_token_ids": [1, 2],
        "completion_token_ids": [3],
        "completion_logprobs": [-0.01],
    }
    good_off = seed.upstream([0.9]) + seed.upstream([1.0], **made_up)
    good_off += seed.upstream([0.8], source="backfill:openai")
    low_off = seed.upstream([0.2])
    trainer = Trainer(
        settings_for(home, batch_size=5, min_reward_for_sft=0.5), backend_factory=lambda s: fake
    )
    outcome = trainer.step()
    assert outcome.status == "trained", outcome.reason
    calls = {c.loss_fn: c for c in fake.calls if c.method == "forward_backward"}
    assert set(calls) == {"ppo", "cross_entropy"}  # the default: clipped
    rl_inputs = [json.dumps(d.loss_fn_inputs["logprobs"].tolist()) for d in calls["ppo"].data]
    assert len(rl_inputs) == 2 and all("-0.01" not in x for x in rl_inputs)
    assert len(calls["cross_entropy"].data) == 3
    assert all("logprobs" not in d.loss_fn_inputs for d in calls["cross_entropy"].data)
    (s1,) = steps(paths)
    assert sorted(s1["turn_ids"]) == sorted(on + good_off)
    assert low_off[0] not in s1["turn_ids"]
    assert s1["metrics"]["skipped"] == {"below_sft_threshold": 1}


def test_a_crash_mid_step_resumes_from_the_last_good_checkpoint(
    home: Path, tiny_dir: Path, sampler: LocalBackend
) -> None:
    paths = LedgerPaths(home)
    seed = Seeder(paths)
    settings = settings_for(home, base_model=str(tiny_dir))
    seed.policy(sampler, [1.0, -1.0, 0.5, -0.5])
    assert Trainer(settings).step().status == "trained"
    (s1,) = steps(paths)
    good = Path(s1["metrics"]["state_path"])
    good_digest = dir_digest(good)
    batch2 = seed.policy(sampler, [1.0, 0.75, -1.0, 0.25])

    class PowerCut(LocalBackend):
        """Dies after the update and the state save, before the sampler save and the rows."""

        def save_weights_for_sampler(self, name: str) -> str:
            raise RuntimeError("power cut")

    def crashing(s: Settings) -> LocalBackend:
        return PowerCut(tiny_dir, checkpoint_dir=s.paths.checkpoints, lora_rank=4)

    with pytest.raises(RuntimeError, match="power cut"):
        Trainer(settings, backend_factory=crashing).step()
    assert len(steps(paths)) == 1 and len(candidates(paths)) == 1  # ledger untouched
    assert dir_digest(good) == good_digest  # last good checkpoint intact

    trainer = Trainer(settings)
    outcome = trainer.step()
    assert outcome.status == "trained" and outcome.step == 2
    backend = trainer._backend
    assert isinstance(backend, LocalBackend) and backend.step == 2  # step 1's counter restored
    s2 = steps(paths)[1]
    assert sorted(s2["turn_ids"]) == sorted(batch2)
    assert s2["metrics"]["parent_state_path"] == str(good)
    # same parent and turns → the same ids as the crashed attempt (its orphan dir is replaced)
    assert sorted(
        p.name for p in paths.checkpoints.iterdir() if not p.name.startswith(".")
    ) == sorted([s1["metrics"]["checkpoint_id"], outcome.checkpoint_id])
    # the optimizer state travelled: its step count continued from the checkpoint
    opt_state = torch.load(Path(outcome.path) / "optimizer.pt", weights_only=True)
    assert all(int(s["step"]) == 2 for s in opt_state["state"].values())


@pytest.mark.parametrize(
    "corrupt, learning_rate, reason",
    [
        (-0.001, 1e-3, "sampler/learner KL"),  # logprobs not from this learner: caught before
        (None, 1e30, "after the update: non-finite loss"),  # an update that blows up: never saved
    ],
)
def test_a_diverging_step_fails_and_nothing_is_saved(
    home: Path,
    tiny_dir: Path,
    sampler: LocalBackend,
    corrupt: float | None,
    learning_rate: float,
    reason: str,
) -> None:
    paths = LedgerPaths(home)
    seed = Seeder(paths)
    settings = settings_for(home, base_model=str(tiny_dir), learning_rate=learning_rate)
    bad = seed.policy(sampler, [1.0, -1.0, 1.0, -1.0], corrupt=corrupt)
    trainer = Trainer(settings)
    outcome = trainer.step()
    assert outcome.status == "failed" and reason in outcome.reason
    (s1,) = steps(paths)
    assert s1["metrics"]["status"] == "failed" and sorted(s1["turn_ids"]) == sorted(bad)
    assert candidates(paths) == [] and not any(paths.checkpoints.glob("ckpt-*"))
    assert trainer.step().status == "idle"  # the bad batch is quarantined, not retried
    seed.policy(sampler, [1.0, -1.0, 0.5, -0.5])
    trainer.settings.training.learning_rate = 1e-3
    good = trainer.step()  # a fresh learner: the failed step left nothing behind
    assert good.status == "trained" and good.step == 2
    assert good.metrics["parent_state_path"].startswith("base:")
    assert abs(good.metrics["kl"]) < 1e-3


def test_turns_with_holes_in_their_logprobs_are_not_importance_weighted(
    home: Path, tiny_dir: Path, sampler: LocalBackend
) -> None:
    """JSON stores a NaN logprob as null: such a turn is off-policy (SFT if good enough)."""
    paths = LedgerPaths(home)
    Seeder(paths).policy(sampler, [1.0, 1.0, 0.9, 0.2], corrupt=math.nan)
    outcome = Trainer(settings_for(home, base_model=str(tiny_dir), batch_size=3)).step()
    assert outcome.status == "trained"
    assert outcome.metrics["n_rl"] == 0 and outcome.metrics["n_sft"] == 3
    assert outcome.skipped == {"below_sft_threshold": 1}


def test_stale_skill_set_turns_are_left_out_of_on_policy_updates(
    home: Path, tiny_dir: Path, sampler: LocalBackend
) -> None:
    paths = LedgerPaths(home)
    seed = Seeder(paths)
    append_rows(
        paths.wal,
        "skill_events",
        [
            {
                "event_id": "e1",
                "skill_id": "s",
                "version": 1,
                "event": "created",
                "skill_set_version": 3,
                "ts": now_micros(),
            }
        ],
    )
    stale = seed.policy(sampler, [1.0, -1.0, 1.0, -1.0], version=2)
    trainer = Trainer(settings_for(home, base_model=str(tiny_dir)))
    outcome = trainer.step()
    assert outcome.status == "idle" and outcome.skipped == {"stale_skill_set": 4}
    fresh = seed.policy(sampler, [1.0, -1.0, 1.0, -1.0], version=3)
    outcome = trainer.step()
    assert outcome.status == "trained"
    (s1,) = steps(paths)
    assert sorted(s1["turn_ids"]) == sorted(fresh) and not set(stale) & set(s1["turn_ids"])
    assert s1["metrics"]["skipped"] == {"stale_skill_set": 4}


@pytest.fixture(scope="module")
def teacher() -> Iterator[TeacherStub]:
    with TeacherStub() as stub:
        yield stub


def test_on_policy_distillation_uses_the_teacher_logprobs(home: Path, teacher: TeacherStub) -> None:
    fake = BigramBackend(64, checkpoint_dir=home / "checkpoints")
    paths = LedgerPaths(home)
    seed = Seeder(paths)
    seed.policy(fake, [None, None, 1.0, None])  # distillation needs no reward
    settings = settings_for(
        home,
        loss_fn="distillation",
        kl_coef=0.5,
        teacher_base_url=teacher.base_url,
        teacher_model="teacher",
    )
    outcome = Trainer(settings, backend_factory=lambda s: fake).step()
    assert outcome.status == "trained", outcome.reason
    (call,) = [c for c in fake.calls if c.method == "forward_backward"]
    assert call.loss_fn == "importance_sampling" and len(call.data) == 4
    for datum in call.data:
        targets = datum.loss_fn_inputs["target_tokens"].tolist()
        tokens = [*datum.model_input.to_ints(), targets[-1]]  # the full sequence
        adv = datum.loss_fn_inputs["advantages"].tolist()
        q = datum.loss_fn_inputs["logprobs"].tolist()
        n_prompt = 4
        for k in range(n_prompt - 1, len(adv)):  # completion positions
            expected = 0.5 * (teacher_logprob(tokens[k + 1], k + 1) - q[k])
            assert adv[k] == pytest.approx(expected, abs=1e-5)
        assert adv[: n_prompt - 1] == [0.0] * (n_prompt - 1)
    assert outcome.metrics["advantage_methods"] == {"distillation": 4}


def test_distillation_without_a_teacher_or_hints_trains_nothing(home: Path) -> None:
    """No configured teacher: only turns a user corrected or commented on have one (the hinted
    policy); turns nobody spoke about are left for later, counted, never trained blind."""
    fake = BigramBackend(64, checkpoint_dir=home / "checkpoints")
    Seeder(LedgerPaths(home)).policy(fake, [None] * 4)
    trainer = Trainer(settings_for(home, loss_fn="distillation"), backend_factory=lambda s: fake)
    outcome = trainer.step()
    assert outcome.status == "idle" and outcome.skipped == {"no_hint": 4}
    assert steps(LedgerPaths(home)) == []


def test_corrected_turns_are_distilled_from_the_policy_with_the_users_hint(
    home: Path, tiny_dir: Path, sampler: LocalBackend
) -> None:
    """Hindsight-hint distillation through the trainer: the user's correction in the next turn
    becomes a hint; the teacher is the policy itself with that hint in context, scoring the
    tokens it actually served."""
    corrected = Seeder(LedgerPaths(home)).conversations(
        sampler, 6, correct=4, correction="No, that's wrong. Always end your answer with 'Cheers'."
    )
    settings = settings_for(
        home, loss_fn="distillation", base_model=str(tiny_dir), kl_coef=1.0, hint_rollouts=0
    )
    trainer = Trainer(settings)
    try:
        outcome = trainer.step()
    finally:
        trainer.close()
    assert outcome.status == "trained", outcome.reason
    assert outcome.metrics["advantage_methods"] == {"hint_distillation": 4}
    assert sorted(outcome.metrics["hints"]) == sorted(corrected)
    assert outcome.skipped == {"no_hint": 2}
    # the hint changed the teacher's view of the served tokens: a real signal, not zeros
    assert abs(outcome.metrics["advantage_mean"]) > 1e-4


def test_a_lost_candidate_row_is_recorded_again(home: Path) -> None:
    paths = LedgerPaths(home)
    append_rows(
        paths.wal,
        "train_steps",
        [
            {
                "step_id": "x1",
                "step": 1,
                "backend": "local",
                "base_model": "m",
                "loss_fn": "ppo",
                "turn_ids": ["t1"],
                "ts": now_micros(),
                "metrics": {
                    "status": "ok",
                    "checkpoint_id": "ckpt-000001-x",
                    "state_path": "/c/1",
                    "sampler_path": "/c/1",
                    "config": {"backend_impl": "local"},
                },
            }
        ],
    )
    trainer = Trainer(settings_for(home), backend_factory=lambda s: pytest.fail("no backend"))
    assert trainer.step().status == "idle"
    assert candidates(paths) == [
        {"checkpoint_id": "ckpt-000001-x", "step": 1, "path": "/c/1", "status": "candidate"}
    ]
    trainer.step()
    assert len(candidates(paths)) == 1  # stable event id: repaired once


def test_the_deploy_gates_held_out_turns_are_never_trained(home: Path) -> None:
    from metaclaw.deploy.split import held_out_turn_ids

    fake = BigramBackend(64, checkpoint_dir=home / "checkpoints")
    paths = LedgerPaths(home)
    seeder = Seeder(paths)
    # one session per turn, distinct prompts except two repeats (held out with their twin)
    seeded = [
        t
        for i in range(24)
        for t in seeder.policy(
            fake,
            [1.0],
            request=json.dumps({"messages": [{"role": "user", "content": f"q{i % 22}"}]}),
        )
    ]
    settings = settings_for(home, eval_fraction=0.5, batch_size=1, loss_fn="cross_entropy")
    held = held_out_turn_ids(
        rows(paths, "SELECT turn_id, session_id, CAST(request AS VARCHAR) AS request FROM turns"),
        settings,
    )
    assert 0 < len(held) < len(seeded)  # a hash split: both sides non-empty (p ≈ 1e-7 not)
    outcomes = Trainer(settings, backend_factory=lambda s: fake).run(max_steps=30)
    trained = {t for s in steps(paths) for t in s["turn_ids"]}
    assert trained == set(seeded) - held
    assert outcomes[-1].status == "idle"
    assert outcomes[-1].skipped == {"held_out_for_eval": len(held)}


def test_sft_trains_on_the_prompt_that_was_served(home: Path) -> None:
    """The skills block the proxy appended (`turns.injected_text`) is part of the SFT prompt,
    for an OpenAI and an Anthropic client, exactly where the proxy put it."""
    tok = build_tokenizer()
    fake = BigramBackend(
        len(tok), checkpoint_dir=home / "checkpoints", tokenizer=tok, eos_token_id=tok.eos_token_id
    )
    paths = LedgerPaths(home)
    seed = Seeder(paths)
    block = "## Skills\nAnswer with the city name only."
    seed.upstream([1.0], injected_text=block)
    seed.upstream([1.0], injected_text=block, client="anthropic")
    seed.upstream([1.0])  # nothing injected: the prompt is the request as sent
    outcome = Trainer(settings_for(home, batch_size=3), backend_factory=lambda s: fake).step()
    assert outcome.status == "trained", outcome.reason
    (call,) = [c for c in fake.calls if c.method == "forward_backward"]
    prompts = [tok.decode(d.model_input.to_ints()) for d in call.data]
    assert sum(block in p for p in prompts) == 2
    assert all(p.startswith(f"<|im_start|>system\n{block}<|im_end|>") for p in prompts[:2])


# -- context distillation: replies the serving policy writes held to the user's rule ---------


@pytest.fixture(scope="module")
def policy_server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """The real policy server app on the tiny model (the same weights the trainer loads)."""
    from metaclaw.serving.app import create_app
    from metaclaw.serving.engine import PolicyEngine
    from tests.served_app import ServedApp

    engine = PolicyEngine(tiny_dir, name="tiny").start()
    app = create_app(engine, home=tmp_path_factory.mktemp("policy-home"), request_timeout_s=120)
    with ServedApp(app) as served:
        yield served.port


def test_rollouts_hold_the_rule_and_end_with_its_suffix(
    policy_server: int, sampler: LocalBackend
) -> None:
    """Through real HTTP to the policy server: every reply matches the rule's regex, then the
    suffix, then end-of-turn; a rule the decoder cannot finish in max_tokens is dropped."""
    import re

    from metaclaw.scoring.hint_rules import HintRule
    from metaclaw.training.hint_rollouts import HintRolloutClient, RolloutRequest

    tok = sampler.get_tokenizer()
    client = HintRolloutClient(f"http://127.0.0.1:{policy_server}/v1", "tiny", tok)
    rule = HintRule(body=r"[a-z]{1,6}[.]", prefix="Ok ", suffix=" Cheers!")
    prompts = [[1, 20 + i, 3, 4] for i in range(3)]
    got, skipped = client.rollouts(
        [RolloutRequest(f"t{i}", p, rule) for i, p in enumerate(prompts)],
        samples=2,
        temperature=1.0,
        max_tokens=16,
    )
    assert len(got) == 6 and not skipped
    suffix = tok(" Cheers!", add_special_tokens=False)["input_ids"]
    for r in got:
        assert r.prompt == prompts[int(r.turn_id[1:])]
        assert r.completion[-1] == tok.eos_token_id
        body = r.completion[: -1 - len(suffix)]
        assert r.completion[-1 - len(suffix) : -1] == suffix
        assert re.fullmatch(re.escape("Ok ") + r"[a-z]{1,6}[.]", tok.decode(body))
    unbounded = HintRule(body=r"[a-z]{40,60}[.]")  # cannot finish in 4 tokens
    got, skipped = client.rollouts(
        [RolloutRequest("t", prompts[0], unbounded)], samples=1, temperature=1.0, max_tokens=4
    )
    assert got == [] and skipped == {"teacher_unfinished": 1}


def test_corrected_turns_with_a_rule_train_on_rule_holding_replies(
    home: Path, tiny_dir: Path, sampler: LocalBackend, policy_server: int
) -> None:
    """The trainer asks the policy server for replies held to the rule the user's correction
    states and adds them to the step as cross-entropy samples on the turn's own prompt."""
    corrected = Seeder(LedgerPaths(home)).conversations(
        sampler, 4, correct=3, correction="Too long. Keep it under 2 words, please.", reward=-1.0
    )
    settings = settings_for(home, base_model=str(tiny_dir), hint_rollout_max_tokens=256)
    settings.policy.port = policy_server
    trainer = Trainer(settings)
    try:
        outcome = trainer.step()
    finally:
        trainer.close()
    assert outcome.status == "trained", outcome.reason
    report = outcome.metrics["hint_rollouts"]
    # "under 2 words" is a one-word reply; a word is bounded, so every rollout finishes
    assert report == {"turns": 3, "samples": 6, "skipped": {}, "rules": {"at most 1 words": 3}}
    assert outcome.metrics["n_rl"] == 4 and outcome.metrics["n_sft"] == 6
    assert sorted(outcome.metrics["hints"]) == sorted(corrected)
    assert outcome.metrics["loss_sft"] > 0
