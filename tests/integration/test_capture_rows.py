"""The rows the real proxy writes for each client API carry exactly the `turns` columns.

Read from the WAL as written (the ledger's views would show every column whatever was written):
OpenAI chat and the native Anthropic Messages API, plain and streamed, through one proxy.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest

from metaclaw.ledger.records import decode_lines
from metaclaw.ledger.schemas import TURNS
from metaclaw.ledger.wal import list_segments
from tests.helpers import ProxyProcess
from tests.stubs.upstream_server import StubUpstream

pytestmark = pytest.mark.slow  # a proxy process of its own (~15 s to start on 2 cores)


def _wal_turns(proxy: ProxyProcess, marker: str) -> list[dict[str, object]]:
    found = []
    for segment in list_segments(proxy.paths.wal):
        for table, row in decode_lines(segment.read_bytes()):
            if table == TURNS.name and marker in str(row.get("request")):
                found.append(row)
    return found


@pytest.fixture(scope="module")
def proxy(stub: StubUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    """OpenAI chat to the stub's OpenAI API, Anthropic messages to its native one."""
    env = {
        "METACLAW_UPSTREAM__BASE_URL": stub.base_url + "/v1",
        "METACLAW_UPSTREAM__ANTHROPIC_BASE_URL": stub.base_url,
    }
    home: Path = tmp_path_factory.mktemp("capture-rows")
    with ProxyProcess(home, env) as proc:
        yield proc


@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_rows_have_exactly_the_schema_columns(
    proxy: ProxyProcess, stream: bool
) -> None:
    marker = uuid.uuid4().hex
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
    reply = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"hi {marker}"}], stream=stream
    )
    if stream:
        list(reply)  # type: ignore[arg-type]
    rows = _wal_turns(proxy, marker)
    assert len(rows) == 1
    assert list(rows[0]) == list(TURNS.schema.names)
    assert rows[0]["client"] == "openai" and rows[0]["stream"] is stream


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_rows_have_exactly_the_schema_columns(proxy: ProxyProcess, stream: bool) -> None:
    marker = uuid.uuid4().hex
    client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0)
    request = {"model": "claude-test", "max_tokens": 20}
    messages = [{"role": "user", "content": f"hi {marker}"}]
    if stream:
        with client.messages.stream(messages=messages, **request) as events:  # type: ignore[arg-type]
            events.get_final_message()
    else:
        client.messages.create(messages=messages, **request)  # type: ignore[arg-type]
    rows = _wal_turns(proxy, marker)
    assert len(rows) == 1
    assert list(rows[0]) == list(TURNS.schema.names)
    assert rows[0]["client"] == "anthropic" and rows[0]["stream"] is stream
