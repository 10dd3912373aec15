"""SSEParser: field parsing, every terminator style, chunking independence, linear cost."""

from __future__ import annotations

import json
import random
import time

import pytest

from metaclaw.proxy.sse import SSEEvent, SSEParser

# A realistic OpenAI stream (LF), an Anthropic stream (LF, with event names and a ping), and
# the same kind of content with CRLF / CR / mixed terminators, comments and odd fields.
OPENAI_STREAM = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":"Hel"},"finish_reason":null}]}\n\n'
    b": keep-alive\n\n"
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"index":0,'
    b'"delta":{"content":"lo \xc3\xa9t\xc3\xa9"},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
ANTHROPIC_STREAM = (
    b"event: message_start\n"
    b'data: {"type":"message_start","message":{"id":"msg_1","model":"claude"}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b"event: content_block_delta\n"
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)
CRLF_STREAM = (
    b"event: a\r\ndata: one\r\ndata:two\r\n\r\n"
    b": comment\r\n\r\n"
    b"id: 7\r\nretry: 100\r\ndata\r\n\r\n"
    b"data:  leading space kept\r\n\r\n"
)
CR_STREAM = b"event: x\rdata: 1\r\rdata: 2\r\r: c\r\rdata: 3\r\r"
MIXED_STREAM = (
    b"\xef\xbb\xbfdata: bom\n\n"
    b"data: a\r\ndata: b\rdata: c\n\r\n"
    b"\n\n"  # stray blank lines: padding for the next event
    b"event: last\ndata: x\r\r"
    b"data: truncated"
)
ALL_STREAMS = [OPENAI_STREAM, ANTHROPIC_STREAM, CRLF_STREAM, CR_STREAM, MIXED_STREAM]


def parse_all(chunks: list[bytes]) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.flush())
    return events


def fields(events: list[SSEEvent]) -> list[tuple[str | None, str]]:
    return [(e.event, e.data) for e in events]


def test_openai_stream_fields_and_raw() -> None:
    events = parse_all([OPENAI_STREAM])
    assert [e.data == "" for e in events] == [False, False, True, False, False]
    assert events[-1].data == "[DONE]"
    assert events[2] == SSEEvent(raw=b": keep-alive\n\n", event=None, data="")
    payloads = [json.loads(e.data) for e in events if e.data and e.data != "[DONE]"]
    assert [p["choices"][0]["delta"].get("content") for p in payloads] == ["", "Hel", "lo été"]
    assert all(e.event is None for e in events)
    assert events[0].raw.startswith(b'data: {"id"') and events[0].raw.endswith(b"}\n\n")
    assert b"".join(e.raw for e in events) == OPENAI_STREAM


def test_anthropic_stream_event_names() -> None:
    events = parse_all([ANTHROPIC_STREAM])
    assert [e.event for e in events] == [
        "message_start",
        "ping",
        "content_block_delta",
        "message_stop",
    ]
    assert json.loads(events[1].data) == {"type": "ping"}
    assert events[1].raw == b'event: ping\ndata: {"type": "ping"}\n\n'


def test_crlf_fields() -> None:
    assert fields(parse_all([CRLF_STREAM])) == [
        ("a", "one\ntwo"),  # multiple data lines; "data:" without the space
        (None, ""),  # comment-only block, kept for forwarding
        (None, ""),  # "data" with no colon is a data line with an empty value
        (None, " leading space kept"),  # only one space after the colon is removed
    ]


def test_cr_terminators() -> None:
    events = parse_all([CR_STREAM])
    assert fields(events) == [("x", "1"), (None, "2"), (None, ""), (None, "3")]
    assert events[0].raw == b"event: x\rdata: 1\r\r"


def test_mixed_terminators_bom_padding_and_truncated_tail() -> None:
    events = parse_all([MIXED_STREAM])
    assert fields(events) == [
        (None, "bom"),
        (None, "a\nb\nc"),
        ("last", "x"),
        (None, "truncated"),
    ]
    assert events[0].raw == b"\xef\xbb\xbfdata: bom\n\n"  # BOM ignored for parsing, kept raw
    assert events[2].raw == b"\n\nevent: last\ndata: x\r\r"  # padding goes to the next event
    assert events[3].raw == b"data: truncated"


def test_events_are_returned_as_soon_as_complete() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b\n\nda") == [
        SSEEvent(raw=b"data: a\n\n", event=None, data="a"),
        SSEEvent(raw=b"data: b\n\n", event=None, data="b"),
    ]
    assert parser.feed(b"ta: c") == []
    assert parser.flush() == [SSEEvent(raw=b"data: c", event=None, data="c")]
    assert parser.flush() == []


def test_crlf_split_between_cr_and_lf() -> None:
    parser = SSEParser()
    # The trailing "\r" may be half of "\r\n": held back until the next byte is known.
    assert parser.feed(b"data: a\r\n\r") == []
    assert parser.feed(b"\ndata: b\r") == [SSEEvent(raw=b"data: a\r\n\r\n", event=None, data="a")]
    # "\r" then "\n" across chunks is one line break, not a blank line ending the event.
    assert parser.feed(b"\ndata: c\r\n\r\n") == [
        SSEEvent(raw=b"data: b\r\ndata: c\r\n\r\n", event=None, data="b\nc")
    ]


def test_lone_cr_completes_when_next_byte_is_not_lf() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r\r") == []
    assert parser.feed(b"d") == [SSEEvent(raw=b"data: a\r\r", event=None, data="a")]
    assert parser.feed(b"ata: b\r\r") == []
    assert parser.flush() == [SSEEvent(raw=b"data: b\r\r", event=None, data="b")]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    events = parse_all([b"data: \xff\xfe ok\n\n"])
    assert events[0].data == "\ufffd\ufffd ok"
    assert events[0].raw == b"data: \xff\xfe ok\n\n"


def test_parser_is_reusable_after_flush() -> None:
    parser = SSEParser()
    parser.feed(b"data: x")
    assert fields(parser.flush()) == [(None, "x")]
    assert fields(parser.feed(b"\xef\xbb\xbfevent: e\ndata: y\n\n")) == [("e", "y")]


@pytest.mark.parametrize("stream", ALL_STREAMS, ids=["openai", "anthropic", "crlf", "cr", "mix"])
def test_split_at_every_byte_matches_whole_feed(stream: bytes) -> None:
    whole = parse_all([stream])
    assert b"".join(e.raw for e in whole) == stream
    bytewise = parse_all([stream[i : i + 1] for i in range(len(stream))])
    assert bytewise == whole
    # Every single split point too (covers a boundary inside each "\r\n").
    for cut in range(1, len(stream)):
        assert parse_all([stream[:cut], stream[cut:]]) == whole, cut


@pytest.mark.parametrize("seed", range(20))
def test_random_chunking_matches_whole_feed(seed: int) -> None:
    rng = random.Random(seed)
    stream = b"".join(rng.choice(ALL_STREAMS[:4]) for _ in range(6))
    whole = parse_all([stream])
    chunks: list[bytes] = []
    pos = 0
    while pos < len(stream):
        size = rng.choice([1, 2, 3, 5, 8, 13, 64, 300])
        chunks.append(stream[pos : pos + size])
        pos += size
    assert parse_all(chunks) == whole
    assert b"".join(e.raw for e in whole) == stream


def test_long_line_in_tiny_chunks_is_linear() -> None:
    # 2 MiB data line in 64-byte chunks: re-joining the buffer per chunk would copy ~64 GiB.
    payload = b"x" * (2 * 1024 * 1024)
    stream = b"data: " + payload + b"\n\n"
    parser = SSEParser()
    events: list[SSEEvent] = []
    started = time.perf_counter()
    for i in range(0, len(stream), 64):
        events.extend(parser.feed(stream[i : i + 64]))
    elapsed = time.perf_counter() - started
    assert len(events) == 1 and len(events[0].data) == len(payload)
    assert elapsed < 5.0


def test_many_events_in_one_chunk() -> None:
    stream = b"".join(b'data: {"n":%d}\n\n' % i for i in range(20000))
    events = SSEParser().feed(stream)
    assert len(events) == 20000
    assert json.loads(events[-1].data) == {"n": 19999}
