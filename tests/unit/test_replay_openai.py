"""OpenAI chat JSONL → turns and feedback: snapshots, tools, reward fields, bad lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaclaw.replay import Feedback, ParseOptions, Problem, SessionDone, Turn
from metaclaw.replay.openai_jsonl import feedback_value, parse_openai_jsonl

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "replay" / "openai-chat.jsonl"
MTIME_US = 1_760_000_000_000_000


@pytest.fixture(scope="module")
def items() -> list:
    return list(parse_openai_jsonl(FIXTURE, ParseOptions(), MTIME_US))


def turns(items: list) -> list[dict]:
    return [i.row for i in items if isinstance(i, Turn)]


def test_each_assistant_message_is_a_turn_with_its_prefix_as_request(items: list) -> None:
    rows = turns(items)
    texts = [r["completion_text"] for r in rows]
    assert texts == ["4", "Hello!", "Hello!", "Sunny.", None, "18C and cloudy in Paris.", "ok"]
    first = rows[0]
    assert first["session_id"] == "conv-1" and first["model"] == "gpt-4o-mini"
    assert first["request"]["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "2+2?"},
    ]
    assert first["ts_end"] == 1769936400 * 1_000_000
    assert first["source"] == "backfill:openai" and first["status"] == "ok"


def test_snapshot_lines_of_one_session_give_the_same_turn_the_same_id(items: list) -> None:
    conv2 = [r for r in turns(items) if r["session_id"] == "conv-2"]
    assert len(conv2) == 3
    assert conv2[0]["turn_id"] == conv2[1]["turn_id"], "line 3 repeats line 2's turn"
    assert conv2[2]["turn_index"] == 1 and conv2[2]["turn_id"] != conv2[0]["turn_id"]
    assert conv2[2]["ts_start"] == 1769936460 * 1_000_000
    assert conv2[2]["ts_end"] == 1769936462 * 1_000_000


def test_tool_calls_tools_and_results(items: list) -> None:
    call, final = [r for r in turns(items) if r["request"].get("tools")]
    assert call["finish_reason"] == "tool_calls"
    assert call["tool_calls"] == [
        {
            "id": "call_w",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    assert [m["role"] for m in final["request"]["messages"]] == ["user", "assistant", "tool"]
    assert final["request"]["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call_w",
        "content": "18C, cloudy",
    }
    assert "reward" not in final["request"]["messages"][1], "metadata stays out of requests"
    assert call["session_id"].startswith("openai-") and call["session_id"] == final["session_id"]
    assert final["ts_end"] == 1769940000 * 1_000_000


def test_reward_fields_become_feedback_on_the_right_turn(items: list) -> None:
    rows = {r["turn_id"]: r for r in turns(items)}
    feedback = [i.row for i in items if isinstance(i, Feedback)]
    by_text = {rows[f["turn_id"]]["completion_text"]: f for f in feedback}
    assert set(by_text) == {"4", None, "18C and cloudy in Paris."}
    assert by_text["4"]["value"] == 1.0
    assert by_text[None]["value"] == 1.0  # `reward: true` on the tool-call message
    slow = by_text["18C and cloudy in Paris."]
    assert slow["value"] == -0.5 and slow["comment"].endswith("(feedback): too slow")
    assert f"{FIXTURE}:4" in slow["comment"], "the comment names the source file:line"
    assert slow["session_id"] == rows[slow["turn_id"]]["session_id"]
    assert len({f["feedback_id"] for f in feedback}) == 3


def test_bad_lines_are_skipped_with_reasons_and_good_turns_kept(items: list) -> None:
    problems = {p.where.rsplit(":", 1)[1]: p.message for p in items if isinstance(p, Problem)}
    assert set(problems) == {"5", "6", "7", "8", "9"}
    assert "no assistant message" in problems["5"]
    assert "rating: value 4 is outside -1..1" in problems["6"] and "turn is kept" in problems["6"]
    assert "role 'robot'" in problems["7"]
    assert "non-empty 'messages' list" in problems["8"]
    assert "invalid JSON" in problems["9"]
    assert sum(isinstance(i, SessionDone) for i in items) == 5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (True, (1.0, None)),
        (False, (-1.0, None)),
        (0.25, (0.25, None)),
        (-1, (-1.0, None)),
        ("thumbs_down", (-1.0, None)),
        ({"score": 0.5, "comment": "fine"}, (0.5, "fine")),
    ],
)
def test_feedback_values(raw: object, expected: tuple) -> None:
    assert feedback_value(raw) == expected


@pytest.mark.parametrize("raw", [5, "meh", {"note": 1}, None])
def test_unusable_feedback_values_say_why(raw: object) -> None:
    assert isinstance(feedback_value(raw), str)


def test_ids_do_not_depend_on_where_the_file_lives(tmp_path: Path, items: list) -> None:
    moved = tmp_path / "elsewhere.jsonl"
    moved.write_bytes(FIXTURE.read_bytes())
    again = list(parse_openai_jsonl(moved, ParseOptions(), MTIME_US))
    assert [r["turn_id"] for r in turns(again)] == [r["turn_id"] for r in turns(items)]
    assert [f.row["feedback_id"] for f in again if isinstance(f, Feedback)] == [
        f.row["feedback_id"] for f in items if isinstance(f, Feedback)
    ]
