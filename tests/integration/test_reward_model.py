"""The adaptive reward model on a real ledger (WAL + DuckDB views), the real static MiniLM table
and a real judge server process (tests/stubs/judge_server.py): it learns a rule from users'
labels and generalises to replies it never saw, and triage sends the judge exactly the turns
the model is unsure of (plus the audit sample)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from metaclaw.config import DeploySettings, JudgeSettings, RewardModelSettings, Settings
from metaclaw.deploy.pairwise import PairwiseJudge
from metaclaw.deploy.reward_pairs import pair_decider
from metaclaw.ledger import WalWriter
from metaclaw.ledger.reader import connect
from metaclaw.ledger.records import now_micros
from metaclaw.scoring.adaptive import (
    Label,
    decisiveness,
    label_contexts,
    label_weight,
    load_labels,
    predict_contexts,
    refresh,
)
from metaclaw.scoring.adaptive import status_line as model_status
from metaclaw.scoring.hint_rules import HintRule
from metaclaw.scoring.reward_store import current_info
from metaclaw.scoring.scorer import score, status_line
from metaclaw.scoring.triage import audited
from tests.helpers import rows
from tests.stubs.deploy_server import PairwiseJudgeStub
from tests.stubs.judge_server import StubJudge

S = 1_000_000
SURE = 0.8  # the triage confidence of the triage test
QUESTIONS = [
    "How do I reverse a list in Python?",
    "What is the capital of Australia?",
    "Can you summarise the meeting notes?",
    "How long should I boil an egg?",
    "What does HTTP 404 mean?",
    "How do I undo my last git commit?",
    "Which planet is closest to the sun?",
    "How do I convert Celsius to Fahrenheit?",
    "What is a good name for a cat?",
    "How many bytes are in a kilobyte?",
    "Can you suggest a title for my essay on rivers?",
    "What time zone is Tokyo in?",
]
BODIES = [
    "Use slicing: items[::-1] returns a reversed copy, or call items.reverse() in place.",
    "The capital of Australia is Canberra, not Sydney.",
    "The meeting agreed on the budget, moved the launch to May and assigned the review to Kim.",
    "About seven minutes for a firm yolk, nine for hard-boiled.",
    "It means the server could not find the requested resource.",
    "Run git reset --soft HEAD~1 to undo the commit and keep your changes staged.",
    "Mercury is the closest planet to the sun.",
    "Multiply by 9/5 and add 32: 20 °C is 68 °F.",
    "Miso, Pepper or Juniper are popular choices.",
    "A kilobyte is 1,000 bytes in SI units, or 1,024 in the binary convention.",
    "How about 'Where the Water Goes: Rivers and the Land They Shape'.",
    "Tokyo uses Japan Standard Time, UTC+9, with no daylight saving.",
]
SIGN_OFFS = [
    "Cheers, Sam",
    "Best regards, Alex",
    "Kind regards, the assistant",
    "Warm wishes, Jo",
    "All the best, Robin",
    "Cheers!",
    "Best wishes, Kim",
    "Yours sincerely, the helper",
]
PLAIN_ENDS = [
    "Let me know if you need anything else.",
    "Hope that helps.",
    "",
    "Is there anything more you want to know?",
    "That is the usual approach.",
    "Feel free to ask a follow-up question.",
]


def _turn(sid: str, question: str, reply: str, ago_s: float) -> dict[str, Any]:
    t0 = now_micros() - int(ago_s * S)
    return {
        "turn_id": f"{sid}-0",
        "session_id": sid,
        "turn_index": 0,
        "ts_start": t0,
        "ts_end": t0 + S // 2,
        "request": {"model": "m", "messages": [{"role": "user", "content": question}]},
        "completion_text": reply,
        "status": "ok",
        "finish_reason": "stop",
    }


def corpus(
    prefix: str, n: int, seed: int, bodies: list[str], ends: list[str], signs: list[str]
) -> list[tuple[dict[str, Any], bool]]:
    """Single-turn sessions; half the replies end with a sign-off line (the users' rule)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        k = rng.randrange(len(bodies))
        signed = i % 2 == 0
        end = rng.choice(signs) if signed else rng.choice(ends)
        reply = bodies[k] + (f"\n\n{end}" if end else "")
        q = QUESTIONS[k % len(QUESTIONS)]
        out.append((_turn(f"{prefix}{i}", q, reply, 3600 + i), signed))
    return out


def seed_labelled(settings: Settings, data: list[tuple[dict[str, Any], bool]]) -> None:
    """The turns, and each user's thumbs up (signed) or down (not) as explicit feedback."""
    with WalWriter(settings.paths.wal) as wal:
        wal.append("turns", [t for t, _ in data])
        wal.append(
            "feedback",
            [
                {
                    "feedback_id": f"fb-{t['turn_id']}",
                    "turn_id": t["turn_id"],
                    "value": 1.0 if signed else -1.0,
                    "ts": t["ts_end"] + S,
                }
                for t, signed in data
            ],
        )


def _settings(home: Path, stub: StubJudge | None = None, **rm: Any) -> Settings:
    judge: dict[str, Any] = {"retry_backoff_s": 0.01, "timeout_s": 10.0}
    if stub is not None:
        judge.update(base_url=stub.base_url, model="stub-judge")
    else:
        judge["local_default"] = False
    options = {"min_labels": 40, "audit_share": 0.0, **rm}
    return Settings(
        home=home, judge=JudgeSettings(**judge), reward_model=RewardModelSettings(**options)
    )


@pytest.fixture(scope="module")
def judge_stub() -> Iterator[StubJudge]:
    with StubJudge() as stub:
        yield stub


def _contexts(settings: Settings, turns: list[dict[str, Any]]) -> list[Any]:
    con = connect(settings.paths)
    try:
        labels = load_labels(con, 10_000)
        ids = {t["turn_id"] for t in turns}
        return [c for c in label_contexts(con, labels) if c.turn.turn_id in ids]
    finally:
        con.close()


def test_learns_a_sign_off_rule_and_generalises(home: Path) -> None:
    settings = _settings(home)
    train = corpus("tr", 160, 1, BODIES[:8], PLAIN_ENDS[:4], SIGN_OFFS[:6])
    seed_labelled(settings, train)
    before = refresh(settings)  # 160 labels in the ledger: the first model is due
    assert before.retrained and before.info is not None
    info = before.info
    assert info.version.startswith("rm/f1/") and info.sources == {"explicit": info.train_turns}
    assert info.holdout is not None and info.holdout.human_turns == info.holdout.turns
    assert info.holdout.auc is not None and info.holdout.auc >= 0.9, info.holdout
    assert info.holdout.human_accuracy is not None and info.holdout.human_accuracy >= 0.85
    assert current_info(settings.paths.reward_models) == info  # stored, and current

    # replies on topics the model never saw, labelled only after it was trained
    unseen = corpus("ho", 40, 2, BODIES[8:], PLAIN_ENDS[:4], SIGN_OFFS[:6])
    seed_labelled(settings, unseen)
    contexts = _contexts(settings, [t for t, _ in unseen])
    truth = {t["turn_id"]: signed for t, signed in unseen}
    p = predict_contexts(settings, info, contexts).p
    right = sum((pi >= 0.5) == truth[c.turn.turn_id] for c, pi in zip(contexts, p, strict=True))
    assert len(contexts) == 40 and right / len(contexts) >= 0.9, right

    again = refresh(settings)  # 40 new labels, fewer than retrain_new_labels: not due
    assert not again.retrained and again.info == info and again.why == "not due"
    assert refresh(settings, force=True).retrained
    assert "reward model: rm/f1/" in model_status(settings)


def test_labels_follow_trust_order_and_never_the_models_own(home: Path) -> None:
    settings = _settings(home)
    data = corpus("lb", 6, 3, BODIES, PLAIN_ENDS, SIGN_OFFS)
    turns = [t for t, _ in data]
    ts = now_micros()

    def reward(
        turn: str, signal: str, value: float, votes: list[int | None] | None = None
    ) -> dict[str, Any]:
        return {
            "reward_id": f"{turn}-{signal}",
            "turn_id": turn,
            "signal": signal,
            "value": value,
            "votes": None if votes is None else {"votes": votes, "agreement": 0.0},
            "scorer_version": "v",
            "ts": ts,
        }

    with WalWriter(settings.paths.wal) as wal:
        wal.append("turns", turns)
        wal.append("feedback", [{"feedback_id": "f0", "turn_id": "lb0-0", "value": -1, "ts": ts}])
        wal.append(
            "rewards",
            [
                reward("lb0-0", "judge", 1.0, [1, 1, 1]),  # the user's word beats the judge's
                reward("lb1-0", "judge", 1.0, [1, -1, 1]),
                reward("lb1-0", "implicit:correction", -1.0),  # the judge's beats implicit
                reward("lb2-0", "implicit:correction", -1.0),
                reward("lb3-0", "reward_model", 0.9),  # the model's own: never a label
                reward("lb4-0", "judge", -1.0, [-1, -1, None]),  # an invalid vote: 2-0
                reward("lb5-0", "judge", -1.0),  # no panel recorded
            ],
        )
    con = connect(settings.paths)
    try:
        labels = load_labels(con, 100)
    finally:
        con.close()
    got = {lb.turn_id: (lb.value, lb.source, lb.margin) for lb in labels}
    assert got == {
        "lb0-0": (-1.0, "explicit", None),
        "lb1-0": (1.0, "judge", 1),
        "lb2-0": (-1.0, "implicit", None),
        "lb4-0": (-1.0, "judge", 2),
        "lb5-0": (-1.0, "judge", None),
    }
    rm = settings.reward_model
    weight = {lb.turn_id: label_weight(lb, rm) for lb in labels}
    assert weight["lb0-0"] == rm.explicit_weight and weight["lb2-0"] == rm.implicit_weight
    assert weight["lb1-0"] == pytest.approx(rm.judge_weight * 0.6)  # 2-1 at q = 0.8
    assert weight["lb4-0"] == pytest.approx(rm.judge_weight * (0.64 - 0.04) / (0.64 + 0.04))
    assert weight["lb5-0"] == weight["lb1-0"]  # unknown panel: no more than one vote


def test_a_unanimous_panel_outweighs_split_ones(home: Path) -> None:
    """Judge labels only: the 3-0 verdicts follow the users' rule, the (more numerous) 2-1
    verdicts contradict it. Weighted by their panels' lead (votes each right 60 % of the time:
    a 3-0 verdict counts 0.54, a 2-1 one 0.2) the model learns the rule; counted alike it
    learns the contradiction."""
    settings = _settings(home, judge_vote_accuracy=0.6)
    data = corpus("vw", 200, 4, BODIES[:8], PLAIN_ENDS[:4], SIGN_OFFS[:6])
    # replies on topics it never saw, never labelled: what both models are tried on
    unseen = corpus("vu", 40, 5, BODIES[8:], PLAIN_ENDS[:4], SIGN_OFFS[:6])
    rng = random.Random(9)
    ts = now_micros()
    verdicts = []
    for turn, signed in data:
        split = rng.random() < 0.55
        truth = 1.0 if signed else -1.0
        value = -truth if split else truth
        v = int(value)
        verdicts.append(
            {
                "reward_id": f"{turn['turn_id']}-judge",
                "turn_id": turn["turn_id"],
                "signal": "judge",
                "value": value,
                "votes": {"votes": [v, -v, v] if split else [v, v, v]},
                "scorer_version": "judge/stub/j1/m3",
                "ts": ts,
            }
        )
    with WalWriter(settings.paths.wal) as wal:
        wal.append("turns", [t for t, _ in data + unseen])
        wal.append("rewards", verdicts)
    con = connect(settings.paths)
    try:
        contexts = label_contexts(
            con, [Label(t["turn_id"], t["session_id"], 0.0, "none") for t, _ in unseen]
        )
    finally:
        con.close()
    truth = {t["turn_id"]: signed for t, signed in unseen}
    splits = sum(r["votes"]["votes"][1] != r["votes"]["votes"][0] for r in verdicts)
    assert splits > len(data) / 2  # the split verdicts are the majority of labels

    made = refresh(settings)
    assert made.info is not None
    margins = made.info.judge_margins
    assert set(margins) == {"1", "3"} and sum(margins.values()) == made.info.train_turns
    p = predict_contexts(settings, made.info, contexts).p
    right = sum((pi >= 0.5) == truth[c.turn.turn_id] for c, pi in zip(contexts, p, strict=True))
    assert len(contexts) == 40 and right / len(contexts) >= 0.7, right  # measured: 32 of 40

    # the same labels, every panel counted as sure: the split majority wins
    sure = settings.reward_model.model_copy(update={"judge_vote_accuracy": 0.999999})
    alike = settings.model_copy(update={"reward_model": sure})
    assert decisiveness(1, 0.999999) == pytest.approx(1.0, abs=1e-5)
    flat = refresh(alike, force=True)
    assert flat.info is not None and flat.info.version != made.info.version
    q = predict_contexts(alike, flat.info, contexts).p
    wrong = sum((qi >= 0.5) != truth[c.turn.turn_id] for c, qi in zip(contexts, q, strict=True))
    assert wrong / len(contexts) >= 0.55, wrong  # measured: 26 of 40


def test_triage_judges_only_uncertain_and_audited_turns(home: Path, judge_stub: StubJudge) -> None:
    judge_stub.reset()
    settings = _settings(home, judge_stub, confidence=SURE, audit_share=0.25)
    train = corpus("tr", 160, 1, BODIES[:8], PLAIN_ENDS[:4], SIGN_OFFS[:6])
    seed_labelled(settings, train)
    first = refresh(settings)
    assert first.info is not None
    # new, unlabelled turns: familiar ones, and replies unlike anything labelled
    fresh = [t for t, _ in corpus("new", 40, 5, BODIES[:8], PLAIN_ENDS[:4], SIGN_OFFS[:6])]
    odd = [
        _turn(f"odd{i}", q, reply, 4000 + i)
        for i, (q, reply) in enumerate(
            [
                ("Write a haiku about rain.", "Grey silk on the roofs / the gutters learn to sing"),
                ("Translate 'hello' to French.", "Bonjour"),
                ("Print the numbers 1 to 3.", "```\n1\n2\n3\n```"),
                ("Say nothing.", "..."),
            ]
        )
    ]
    with WalWriter(settings.paths.wal) as wal:
        wal.append("turns", fresh + odd)

    report = score(settings)
    judged = {
        r["turn_id"]: r
        for r in rows(settings.paths, "SELECT * FROM rewards WHERE signal = 'judge'")
    }
    scored = {
        r["turn_id"]: r
        for r in rows(settings.paths, "SELECT * FROM rewards WHERE signal = 'reward_model'")
    }
    everything = {t["turn_id"] for t, _ in train} | {t["turn_id"] for t in fresh + odd}
    assert set(judged) | set(scored) == everything and not set(judged) & set(scored)
    panels = {t: orjson.loads(r["votes"])["votes"] for t, r in judged.items()}
    assert judge_stub.stats()["calls"] == sum(map(len, panels.values())) == report.totals.calls
    assert report.totals.model_scored == len(scored) and len(scored) > 0
    for turn_id, row in scored.items():
        details = orjson.loads(row["votes"])
        assert details["confidence"] >= SURE and not audited(turn_id, 0.25)
        assert row["scorer_version"] == first.info.version == details["model_version"]
        assert row["value"] == pytest.approx(2 * details["p_good"] - 1, abs=1e-3)
    routes = {"uncertain": 0, "audit": 0}
    leans = {"+": 0, "-": 0}
    for turn_id, row in judged.items():
        seen = orjson.loads(row["votes"])["reward_model"]
        routes[seen["route"]] += 1
        if seen["route"] == "audit":  # the whole panel, whatever the model thinks
            assert seen["confidence"] >= SURE and audited(turn_id, 0.25)
            assert panels[turn_id] == [1, 1, 1]
        else:
            assert seen["confidence"] < SURE
            # the stub votes +1: one vote settles a turn the model leans to +1; a turn it
            # leans to -1 gets the rest of the panel, and the majority of all three decides
            lean = "+" if seen["p_good"] > 0.5 else "-"
            leans[lean] += 1
            assert panels[turn_id] == ([1] if lean == "+" else [1, 1, 1]), (seen, panels[turn_id])
        assert row["value"] == 1.0
    assert routes["uncertain"] > 0 and routes["audit"] > 0, routes
    assert leans["+"] > 0 and leans["-"] > 0, leans
    assert report.totals.model_confirmed == leans["+"]
    assert routes["uncertain"] == report.totals.model_uncertain
    assert routes["audit"] == report.totals.model_audited

    sources = {
        r["reward_source"]: r["n"]
        for r in rows(
            settings.paths, "SELECT reward_source, count(*) AS n FROM turn_rewards GROUP BY 1"
        )
    }
    # the labelled turns keep their users' reward; the model's count only where nothing beats it
    new_scored = len(set(scored) - {t["turn_id"] for t, _ in train})
    assert sources.get("reward_model", 0) == new_scored
    assert "judge–human agreement" in status_line(settings)

    again = score(settings)  # nothing left: no call, no row
    assert again.totals.calls == 0 and again.totals.rewards_written == 0


def test_the_reward_model_decides_the_gate_pairs_it_is_sure_of(home: Path) -> None:
    """`deploy.reward_model_pairs`: a pair the model is sure has exactly one good reply is
    decided by it in both orders with no judge call; pairs of two good replies and replies
    unlike anything labelled go to the judge (a real server); the users' rule comes first."""
    train = corpus("gp", 160, 1, BODIES[:8], PLAIN_ENDS[:4], SIGN_OFFS[:6])
    off = _settings(home)
    seed_labelled(off, train)
    assert refresh(off).info is not None
    assert pair_decider(off) is None  # off by default
    with PairwiseJudgeStub("always-a") as stub:
        settings = off.model_copy(
            update={
                "deploy": DeploySettings(reward_model_pairs=True),
                "judge": JudgeSettings(base_url=stub.base_url, model="stub-judge"),
            }
        )
        decider = pair_decider(settings)
        assert decider is not None
        info = current_info(settings.paths.reward_models)
        assert info is not None and decider.version == info.version
        judge = PairwiseJudge.from_settings(settings)
        assert judge is not None
        judge.decider = decider

        signed = [f"{BODIES[k]}\n\n{SIGN_OFFS[k % 6]}" for k in range(8)]
        plain = [f"{BODIES[k]}\n\n{PLAIN_ENDS[k % 4]}" for k in range(8)]

        async def ask(k: int, candidate: str, current: str) -> tuple[Any, Any]:
            messages = [{"role": "user", "content": QUESTIONS[k]}]
            return await judge.both_orders("conversation", candidate, current, messages)

        async def session() -> None:  # one event loop, as an evaluation has
            sure = [await ask(k, signed[k], plain[k]) for k in range(8)]
            sure += [await ask(k, plain[k], signed[k]) for k in range(8)]
            assert sure == [("A", "B")] * 8 + [("B", "A")] * 8  # the model's rule, both orders
            assert judge.stats.model_decided == 16 and stub.stats()["calls"] == 0

            both_good = await ask(0, signed[0], f"{BODIES[0]}\n\n{SIGN_OFFS[5]}")
            odd = await ask(0, "Grey silk on the roofs", "```\n1\n2\n3\n```")
            assert both_good == odd == ("A", "A")  # the position-biased judge answered
            assert judge.stats.model_decided == 16 and stub.stats()["calls"] == 4

            judge.rule = HintRule(prefix="Sure!")  # the users' rule decides before the model
            assert await ask(1, f"Sure! {plain[1]}", signed[1]) == ("A", "B")
            assert judge.stats.rule_decided == 1 and judge.stats.model_decided == 16
            await judge.close()

        asyncio.run(session())
