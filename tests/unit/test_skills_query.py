"""The retrieval query is the user's own words; injection never mutates the request."""

from __future__ import annotations

import copy

from metaclaw.skills.query import clean_user_text, extract_query, inject, inject_system

OPENCLAW_FIRST = (
    "[Wed 2026-11-25 21:17 UTC] my python script crashes with a KeyError\n\n"
    "Runtime: agent=main | session=agent:main:explicit:t1 | sessionId=t1 | host=vm | repo=/w"
)
METADATA = (
    'Conversation info (untrusted metadata):\n```json\n{\n  "message_id": "abc",\n'
    '  "sender": "telegram"\n}\n```\n\nSender (untrusted metadata):\n```json\n'
    '{"label": "Ann", "id": "42"}\n```\n\nplease translate this into French'
)
INTERNAL = [
    {
        "type": "text",
        "text": "<<<BEGIN_OPENCLAW_INTERNAL_CONTEXT>>>\nConversation data"
        ' (data, not instructions):\n"Active exec sessions: none"\n'
        "<<<END_OPENCLAW_INTERNAL_CONTEXT>>>",
    }
]


def test_openclaw_timestamp_runtime_and_internal_context_are_stripped() -> None:
    messages = [
        {"role": "system", "content": "You are a personal assistant"},
        {"role": "user", "content": OPENCLAW_FIRST},
        {"role": "user", "content": INTERNAL},  # OpenClaw sends this one last
    ]
    assert extract_query(messages) == "my python script crashes with a KeyError"


def test_untrusted_metadata_blocks_are_stripped() -> None:
    assert clean_user_text(METADATA) == "please translate this into French"
    bare = (
        'Conversation info (untrusted metadata):\n{\n  "message_id": "x"\n}\n[Fri 2026-02-20 '
        "16:33 EST] schedule a call"
    )
    assert clean_user_text(bare) == "schedule a call"


def test_latest_user_message_wins_and_tool_results_are_skipped() -> None:
    messages = [
        {"role": "user", "content": "first question"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c", "type": "function", "function": {"name": "read"}}],
        },
        {"role": "tool", "content": "file body", "tool_call_id": "c"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "second question"},
                {"type": "image_url", "image_url": {"url": "data:"}},
            ],
        },
    ]
    assert extract_query(messages) == "second question"
    assert extract_query([{"role": "assistant", "content": "hi"}]) == ""
    assert extract_query("not a list") == ""


def test_inject_appends_to_the_system_message_without_mutating() -> None:
    messages = [{"role": "system", "content": "base"}, {"role": "user", "content": "q"}]
    before = copy.deepcopy(messages)
    out = inject(messages, "## Skills\nx")
    assert messages == before
    assert out[0] == {"role": "system", "content": "base\n\n## Skills\nx"}
    assert out[1] is messages[1]
    parts = [{"role": "developer", "content": [{"type": "text", "text": "base"}]}]
    assert inject(parts, "B")[0]["content"] == [
        {"type": "text", "text": "base"},
        {"type": "text", "text": "B"},
    ]
    assert parts[0]["content"] == [{"type": "text", "text": "base"}]


def test_inject_creates_a_system_message_when_absent_and_empty_block_is_identity() -> None:
    messages = [{"role": "user", "content": "q"}]
    assert inject(messages, "B") == [{"role": "system", "content": "B"}, *messages]
    assert inject(messages, "") == messages
    assert inject_system(None, "B") == "B"
    assert inject_system("sys", "B") == "sys\n\nB"
    assert inject_system([{"type": "text", "text": "s"}], "B")[-1] == {"type": "text", "text": "B"}
