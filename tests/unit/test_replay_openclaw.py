"""OpenClaw session JSONL v3 → turns: every record type, branches, tools, compaction, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from metaclaw.replay import ParseOptions, Problem, SessionDone, Turn
from metaclaw.replay.openclaw import parse_openclaw_jsonl
from metaclaw.replay.rows import turn_id

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "replay"
REAL_V3 = Path("/work/shared/data/openclaw-sessions-v3")
OPTS = ParseOptions()
DEFAULT_TS = 1_700_000_000_000_000


def parse(path: Path, opts: ParseOptions = OPTS) -> tuple[dict[str, dict], list[Problem], list]:
    items = list(parse_openclaw_jsonl(path, opts, DEFAULT_TS))
    turns = {}
    for item in items:
        if isinstance(item, Turn):
            reply = item.row["response"]["choices"][0]["message"]
            turns[reply.get("content") or item.row["error"]] = item.row
    problems = [i for i in items if isinstance(i, Problem)]
    done = [i for i in items if isinstance(i, SessionDone)]
    return turns, problems, done


@pytest.fixture(scope="module")
def branches() -> tuple[dict[str, dict], list[Problem], list]:
    return parse(FIXTURES / "openclaw-v3-branches.jsonl")


def roles(row: dict[str, Any]) -> list[str]:
    return [m["role"] for m in row["request"]["messages"]]


def test_every_assistant_message_on_every_branch_is_one_turn(branches) -> None:
    turns, _, done = branches
    assert sorted(turns) == sorted(
        [
            "Let me look.",
            "There are two files.",
            "Deleted a.txt.",
            "Renamed it.",
            "529 overloaded",
            "The command failed because",
            "You are welcome.",
        ]
    )
    assert done == [SessionDone("sess-branches", 7)]
    assert {r["session_id"] for r in turns.values()} == {"sess-branches"}
    assert {r["source"] for r in turns.values()} == {"backfill:openclaw"}


def test_turn_index_counts_assistant_turns_on_the_turns_own_branch(branches) -> None:
    turns, _, _ = branches
    index = {text: row["turn_index"] for text, row in turns.items()}
    assert index == {
        "Let me look.": 0,
        "There are two files.": 1,
        "Deleted a.txt.": 2,
        "Renamed it.": 2,  # two branches from the same reply
        "529 overloaded": 3,
        "The command failed because": 4,
        "You are welcome.": 5,
    }


def test_request_is_the_path_to_the_turn_in_openai_shape(branches) -> None:
    turns, _, _ = branches
    first = turns["Let me look."]
    assert first["request"] == {
        "model": "claude-a",
        "messages": [{"role": "user", "content": "List the files"}],
    }
    second = turns["There are two files."]["request"]["messages"]
    assert second[1] == {
        "role": "assistant",
        "content": "Let me look.",
        "reasoning_content": "I should call ls.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "ls", "arguments": '{"path":"."}'},
            }
        ],
    }
    assert second[2] == {"role": "tool", "tool_call_id": "call_1", "content": "a.txt\nb.txt"}
    deleted = turns["Deleted a.txt."]["request"]["messages"]
    renamed = turns["Renamed it."]["request"]["messages"]
    assert deleted[:4] == renamed[:4]
    assert deleted[4]["content"] == [{"type": "text", "text": "Delete a.txt"}]
    assert renamed[4] == {"role": "user", "content": "Rename a.txt to c.txt"}
    assert len(deleted) == len(renamed) == 5


def test_tool_call_turn_fields(branches) -> None:
    row = branches[0]["Let me look."]
    assert row["finish_reason"] == "tool_calls"
    assert row["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "ls", "arguments": '{"path":"."}'},
        }
    ]
    assert row["completion_text"] == "Let me look."
    assert row["usage"] == {
        "prompt_tokens": 150,
        "completion_tokens": 20,
        "total_tokens": 170,
        "prompt_tokens_details": {"cached_tokens": 50},
    }
    assert row["response"]["object"] == "chat.completion"
    assert row["response"]["usage"] == row["usage"]
    # message.timestamp (stream start) .. record timestamp (stored)
    assert row["ts_start"] == 1773655261000 * 1000
    assert row["ts_end"] == 1773655265000 * 1000
    assert row["latency_ms"] == 4000.0
    assert (row["client"], row["endpoint"], row["served_by"], row["status"]) == (
        "openai",
        "backfill",
        "upstream",
        "ok",
    )
    assert row["prompt_token_ids"] is None and row["completion_logprobs"] is None
    assert row["turn_id"] == turn_id("openclaw", "sess-branches", "a1")


def test_model_follows_model_changes_and_message_overrides(branches) -> None:
    turns, _, _ = branches
    assert turns["There are two files."]["model"] == "claude-a"
    assert turns["Renamed it."]["model"] == "claude-b"
    assert turns["The command failed because"]["model"] == "gpt-x"


def test_compaction_summary_and_kept_tail_replace_older_context(branches) -> None:
    turns, _, _ = branches
    msgs = turns["529 overloaded"]["request"]["messages"]
    assert roles(turns["529 overloaded"]) == ["user", "user", "assistant", "user", "user"]
    assert "The user listed files and renamed a.txt." in msgs[0]["content"]
    assert msgs[1]["content"] == "Rename a.txt to c.txt"  # firstKeptEntryId
    assert msgs[2]["content"] == "Renamed it."
    assert msgs[3]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
    }
    assert msgs[4] == {"role": "user", "content": "Be brief."}  # custom_message


def test_errored_reply_is_a_turn_but_not_context_for_later_turns(branches) -> None:
    turns, _, _ = branches
    err = turns["529 overloaded"]
    assert (err["status"], err["error"], err["finish_reason"]) == (
        "upstream_error",
        "529 overloaded",
        None,
    )
    assert err["http_status"] is None
    later = turns["The command failed because"]["request"]["messages"]
    assert [m["role"] for m in later] == [
        "user",
        "user",
        "assistant",
        "user",
        "user",
        "user",
        "user",
    ], "only the successful reply stays in context"
    assert len(later) == 7 and "Deleting a.txt was tried" in later[5]["content"]
    bash = later[6]["content"]
    assert bash.startswith("Ran `ls`") and "exited with code 1" in bash
    assert turns["The command failed because"]["finish_reason"] == "length"


def test_unknown_types_broken_lines_and_missing_parents_are_reported(branches) -> None:
    turns, problems, _ = branches
    lines = {p.where.rsplit(":", 1)[1]: p for p in problems}
    assert set(lines) == {"23", "24", "27"}
    assert "unknown record type 'frobnicate'" in lines["23"].message
    assert "invalid JSON" in lines["24"].message
    assert "parent entry 'gone' is missing" in lines["27"].message
    assert lines["27"].turns_lost == 1
    assert "orphaned answer" not in turns
    # the unknown record stays in the chain: the turn below it keeps its full context
    assert roles(turns["You are welcome."])[-2:] == ["assistant", "user"]


def test_ids_are_stable_across_parses(branches) -> None:
    again, _, _ = parse(FIXTURES / "openclaw-v3-branches.jsonl")
    assert {r["turn_id"] for r in again.values()} == {r["turn_id"] for r in branches[0].values()}
    assert len({r["turn_id"] for r in again.values()}) == 7


def write(tmp_path: Path, name: str, lines: list[bytes], end: bytes = b"\n") -> Path:
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines) + end)
    return path


def rec(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


USER = rec(type="message", id="u", parentId=None, message={"role": "user", "content": "q"})
REPLY = rec(
    type="message",
    id="a",
    parentId="u",
    message={"role": "assistant", "content": [{"type": "text", "text": "r"}]},
)


def test_non_utf8_line_is_skipped_with_its_column(tmp_path: Path) -> None:
    bad = rec(
        type="message", id="x", parentId="a", message={"role": "user", "content": "caf"}
    ).replace(b"caf", b"caf\xff")
    turns, problems, _ = parse(write(tmp_path, "s.jsonl", [USER, REPLY, bad]))
    assert list(turns) == ["r"]
    assert len(problems) == 1 and problems[0].where.endswith("s.jsonl:3")
    assert "not valid UTF-8 (byte 0xff at column" in problems[0].message


def test_truncated_last_line_loses_only_that_record(tmp_path: Path) -> None:
    cut = REPLY[: len(REPLY) // 2]
    turns, problems, _ = parse(write(tmp_path, "s.jsonl", [USER, REPLY, cut], end=b""))
    assert list(turns) == ["r"]
    assert problems[0].where.endswith(":3") and "truncated record" in problems[0].message


def test_huge_record_is_skipped_without_reading_it_whole(tmp_path: Path) -> None:
    huge = rec(
        type="message", id="u", parentId=None, message={"role": "user", "content": "x" * 5000}
    )
    path = write(tmp_path, "s.jsonl", [huge, REPLY])
    turns, problems, _ = parse(path, ParseOptions(max_record_bytes=1000))
    assert turns == {}
    assert "exceeds replay.max_record_bytes" in problems[0].message
    assert problems[1].turns_lost == 1 and "parent entry 'u' is missing" in problems[1].message


def test_large_images_become_a_placeholder(tmp_path: Path) -> None:
    img = rec(
        type="message",
        id="u",
        parentId=None,
        message={
            "role": "user",
            "content": [{"type": "image", "data": "A" * 4000, "mimeType": "image/jpeg"}],
        },
    )
    turns, _, _ = parse(
        write(tmp_path, "s.jsonl", [img, REPLY]), ParseOptions(max_inline_image_bytes=1000)
    )
    part = turns["r"]["request"]["messages"][0]["content"][0]
    assert part["type"] == "text" and part["text"].startswith("[image image/jpeg, 3000 bytes")


def test_duplicate_ids_and_cycles_never_produce_turns(tmp_path: Path) -> None:
    dup = rec(type="message", id="a", parentId="u", message={"role": "assistant", "content": "d"})
    loop1 = rec(type="message", id="p", parentId="q", message={"role": "user", "content": "l"})
    loop2 = rec(
        type="message", id="q", parentId="p", message={"role": "assistant", "content": "loop"}
    )
    turns, problems, _ = parse(write(tmp_path, "s.jsonl", [USER, REPLY, dup, loop1, loop2]))
    assert list(turns) == ["r"]
    assert "duplicate entry id 'a'" in problems[0].message
    assert "cycle" in problems[1].message and problems[1].turns_lost == 1


def test_legacy_records_without_ids_link_in_file_order(tmp_path: Path) -> None:
    lines = [
        json.dumps({"role": "user", "content": "one"}).encode(),
        json.dumps({"role": "assistant", "content": "two"}).encode(),
        b"{oops",
        json.dumps({"role": "user", "content": "three"}).encode(),
        json.dumps({"role": "assistant", "content": "four"}).encode(),
    ]
    turns, problems, _done = parse(write(tmp_path, "legacy.jsonl", lines))
    assert list(turns) == ["two"], "a gap in a file-order chain must not be skipped over"
    assert turns["two"]["session_id"] == "legacy"
    assert [p.turns_lost for p in problems] == [0, 1]


def test_a_deep_linear_session_does_not_hit_recursion_limits(tmp_path: Path) -> None:
    lines, parent = [], None
    for i in range(3000):
        role = "user" if i % 2 == 0 else "assistant"
        content = f"m{i}" if role == "user" else [{"type": "text", "text": f"m{i}"}]
        lines.append(
            rec(
                type="message",
                id=f"e{i}",
                parentId=parent,
                message={"role": role, "content": content},
            )
        )
        parent = f"e{i}"
    turns, problems, _ = parse(write(tmp_path, "deep.jsonl", lines))
    assert len(turns) == 1500 and not problems
    assert turns["m2999"]["turn_index"] == 1499
    assert len(turns["m2999"]["request"]["messages"]) == 2999


@pytest.mark.skipif(not REAL_V3.is_dir(), reason="shared v3 sample data not present")
def test_real_v3_sessions_from_the_upstream_benchmark() -> None:
    files = sorted(REAL_V3.glob("*.jsonl"))
    assert len(files) == 12
    for path in files:
        turns, problems, _done = parse(path)
        assert not problems
        (row,) = turns.values()
        assert row["session_id"] == path.stem
        assert row["model"] == "claude-sonnet-4-6"
        assert roles(row) == ["user"]
        assert row["usage"] is None  # the bench data records all-zero usage: unknown
        assert row["ts_end"] - row["ts_start"] == 30_000_000
