"""The policy server as a real process (tiny model), driven by the official `openai` client:
OpenAI compatibility, the `metaclaw` extension field, and LoRA hot-swaps under load."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch

from metaclaw.config import LedgerPaths
from metaclaw.ledger import append_rows
from metaclaw.ledger.records import now_micros
from metaclaw.serving.admin_token import HEADER as ADMIN_HEADER
from metaclaw.serving.admin_token import read_admin_token
from metaclaw.serving.launch import start_policy_server
from metaclaw.supervisor import Child
from tests.helpers import REPO, free_port
from tests.serving_helpers import Reference, make_adapter, tiny_model_dir

torch.set_num_threads(1)
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
]


class Server:
    def __init__(
        self, child: Child, port: int, home: Path, model: Path, adapters: dict[str, Path]
    ) -> None:
        self.child, self.home, self.model, self.adapters = child, home, model, adapters
        self.url = f"http://127.0.0.1:{port}"
        self._refs: dict[str | None, Reference] = {}

    def client(self, **kw: Any) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key="unused", **kw)

    def ref(self, checkpoint: str | None) -> Reference:
        """A separate copy of the weights that `checkpoint` names (None: the base model)."""
        if checkpoint not in self._refs:
            adapter = None if checkpoint is None else self.adapters[checkpoint]
            self._refs[checkpoint] = Reference(self.model, adapter)
        return self._refs[checkpoint]

    @property
    def admin(self) -> dict[str, str]:
        """The admin header, with the token the server wrote under its home."""
        token = read_admin_token(self.home)
        assert token is not None
        return {ADMIN_HEADER: token}

    def swap(self, checkpoint_id: str | None, path: Path | str | None = None) -> httpx.Response:
        body = {"checkpoint_id": checkpoint_id, "path": str(path) if path else None}
        return httpx.post(self.url + "/admin/adapter", json=body, headers=self.admin, timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("policy")
    model = tiny_model_dir(root / "model")
    home = root / "home"
    adapters = {
        "ckpt-A": make_adapter(model, root / "A", seed=1),
        "ckpt-B": make_adapter(model, root / "B", seed=2),
    }
    # The ledger says ckpt-A is promoted (an older promotion of ckpt-B was rolled back).
    ts = now_micros()
    rows = [
        {
            "event_id": "e1",
            "checkpoint_id": "ckpt-B",
            "step": 1,
            "backend": "local",
            "path": str(adapters["ckpt-B"]),
            "status": "promoted",
            "ts": ts - 3_000_000,
        },
        {
            "event_id": "e2",
            "checkpoint_id": "ckpt-B",
            "step": 1,
            "backend": "local",
            "path": str(adapters["ckpt-B"]),
            "status": "rolled_back",
            "ts": ts - 2_000_000,
        },
        {
            "event_id": "e3",
            "checkpoint_id": "ckpt-A",
            "step": 2,
            "backend": "local",
            "path": str(adapters["ckpt-A"]),
            "status": "promoted",
            "ts": ts - 1_000_000,
        },
    ]
    append_rows(LedgerPaths(home).wal, "checkpoints", rows)
    port = free_port()
    env = {
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(root / "none.toml"),
        "METACLAW_POLICY__MODEL": str(model),
        "METACLAW_POLICY__TORCH_THREADS": "1",
        "METACLAW_POLICY__MAX_NEW_TOKENS": "4000",
        "METACLAW_POLICY__MAX_BODY_BYTES": "100000",
        "OMP_NUM_THREADS": "1",
    }
    child = start_policy_server(LedgerPaths(home), port, env=env, timeout_s=300)
    try:
        yield Server(child, port, home, model, adapters)
    finally:
        child.stop()


def test_the_promoted_checkpoint_is_served_from_the_start(server: Server) -> None:
    health = httpx.get(server.url + "/healthz").json()
    assert health["status"] == "ok" and health["checkpoint"] == "ckpt-A"
    models = server.client().models.list()
    assert [m.id for m in models.data] == [str(server.model)]
    assert models.data[0].model_extra["metaclaw"]["checkpoint"] == "ckpt-A"


def test_chat_completion_reports_the_models_own_tokens_and_logprobs(server: Server) -> None:
    from transformers import AutoTokenizer

    resp = server.client().chat.completions.create(
        model="anything",
        messages=MESSAGES,
        max_tokens=20,
        temperature=1.0,
        seed=5,
        logprobs=True,
        top_logprobs=2,
    )
    ext = resp.model_extra["metaclaw"]
    tok = AutoTokenizer.from_pretrained(server.model)
    rendered = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert ext["prompt_token_ids"] == tok(rendered, add_special_tokens=False)["input_ids"]
    assert ext["checkpoint"] in server.adapters and ext["temperature"] == 1.0
    expected = server.ref(ext["checkpoint"]).logprobs(
        ext["prompt_token_ids"], ext["completion_token_ids"]
    )
    assert ext["completion_logprobs"] == pytest.approx(expected, abs=1e-4)
    content = resp.choices[0].logprobs.content
    assert [c.logprob for c in content] == pytest.approx(ext["completion_logprobs"])
    assert all(len(c.top_logprobs) == 2 for c in content)
    assert resp.usage.completion_tokens == len(ext["completion_token_ids"])
    assert resp.usage.prompt_tokens == len(ext["prompt_token_ids"])
    assert resp.system_fingerprint == f"metaclaw-{ext['checkpoint']}"


def test_streaming_gives_the_same_answer_and_the_extension_on_the_final_chunk(
    server: Server,
) -> None:
    client = server.client()
    kwargs: dict[str, Any] = {
        "model": "m",
        "messages": MESSAGES,
        "max_tokens": 24,
        "temperature": 0.9,
        "seed": 11,
    }
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    final = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(final) == 1
    assert (
        final[0].model_extra["metaclaw"]["completion_token_ids"]
        == (whole.model_extra["metaclaw"]["completion_token_ids"])
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(
        whole.model_extra["metaclaw"]["completion_token_ids"]
    )


def test_completions_score_a_prompt_like_a_distillation_teacher(server: Server) -> None:
    client = server.client()
    ids = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=12).model_extra[
        "metaclaw"
    ]
    tokens = ids["prompt_token_ids"] + ids["completion_token_ids"]
    resp = client.completions.create(
        model="m", prompt=tokens, max_tokens=0, echo=True, logprobs=0, temperature=1.0
    )
    lp = resp.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(tokens)
    expected = server.ref(ids["checkpoint"]).prompt_logprobs(tokens)
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    text = client.completions.create(
        model="m", prompt="The capital of", max_tokens=6, logprobs=1, temperature=0.0
    )
    ext = text.model_extra["metaclaw"]
    assert text.choices[0].logprobs.token_logprobs == pytest.approx(ext["completion_logprobs"])
    assert len(ext["completion_token_ids"]) == text.usage.completion_tokens <= 6


def test_bad_requests_get_openai_shaped_errors(server: Server) -> None:
    client = server.client(max_retries=0)
    with pytest.raises(openai.BadRequestError, match="'n' must be 1"):
        client.chat.completions.create(model="m", messages=MESSAGES, n=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.chat.completions.create(model="m", messages=MESSAGES, temperature=5)
    resp = httpx.post(
        server.url + "/v1/chat/completions",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"
    assert httpx.get(server.url + "/v1/nothing").json()["error"]["code"] == "not_found"


def test_admin_swaps_by_checkpoint_id_and_refuses_what_it_cannot_serve(
    server: Server, tmp_path: Path
) -> None:
    resp = server.swap("ckpt-B")  # path taken from the ledger
    assert resp.status_code == 200
    assert resp.json() == {"checkpoint_id": "ckpt-B", "path": str(server.adapters["ckpt-B"])}
    conventional = server.home / "checkpoints" / "ckpt-C"  # not in the ledger: the default dir
    shutil.copytree(server.adapters["ckpt-A"], conventional)
    server.adapters["ckpt-C"] = conventional
    assert server.swap("ckpt-C").json()["path"] == str(conventional)
    missing = server.swap("ckpt-missing")
    assert missing.status_code == 422 and "does not exist" in missing.json()["error"]["message"]
    tinker = server.swap("t1", "tinker://run/weights/1")
    assert tinker.status_code == 400 and "Tinker" in tinker.json()["error"]["message"]
    current = httpx.get(server.url + "/admin/adapter", headers=server.admin)
    assert current.json()["checkpoint_id"] == "ckpt-C"
    assert server.swap(None).json() == {"checkpoint_id": None, "path": None}


def test_hot_swap_under_concurrent_requests_drops_nothing(server: Server) -> None:
    """Clients stream and wait while the adapter flips between three states."""
    plan = [("ckpt-A", None), ("ckpt-B", None), (None, None), ("ckpt-A", None), ("ckpt-B", None)]

    async def scenario() -> tuple[list[dict[str, Any]], list[int]]:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)

        async def one(i: int) -> dict[str, Any]:
            kwargs: dict[str, Any] = {
                "model": "m",
                "max_tokens": 16 + i % 8,
                "temperature": 1.0,
                "seed": i,
                "messages": [{"role": "user", "content": f"hello {i}"}],
            }
            if i % 2:
                async with await client.chat.completions.create(**kwargs, stream=True) as s:
                    ext = [c.model_extra.get("metaclaw") async for c in s]
                return next(e for e in ext if e)
            return (await client.chat.completions.create(**kwargs)).model_extra["metaclaw"]

        async def swapper() -> list[int]:
            codes = []
            async with httpx.AsyncClient(timeout=30, headers=server.admin) as http:
                for checkpoint_id, path in plan:
                    await asyncio.sleep(0.05)
                    body = {"checkpoint_id": checkpoint_id, "path": path}
                    codes.append(
                        (await http.post(server.url + "/admin/adapter", json=body)).status_code
                    )
            return codes

        results = await asyncio.gather(*(one(i) for i in range(24)), swapper())
        await client.close()
        return list(results[:-1]), results[-1]

    results, codes = asyncio.run(scenario())
    assert codes == [200] * len(plan)
    seen = {r["checkpoint"] for r in results}
    assert len(results) == 24 and len(seen) >= 2, seen  # requests really straddled swaps
    for r in results:
        expected = server.ref(r["checkpoint"]).logprobs(
            r["prompt_token_ids"], r["completion_token_ids"]
        )
        assert r["completion_logprobs"] == pytest.approx(expected, abs=1e-4), r["checkpoint"]
    after = server.client().chat.completions.create(model="m", messages=MESSAGES, max_tokens=2)
    assert after.model_extra["metaclaw"]["checkpoint"] == "ckpt-B"
    stats = httpx.get(server.url + "/healthz").json()["stats"]
    assert stats["failed"] == 0 and stats["timed_out"] == 0


def test_a_client_that_hangs_up_frees_its_slot(server: Server) -> None:
    before = httpx.get(server.url + "/healthz").json()["stats"]["cancelled"]
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 4000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=0.5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        health = httpx.get(server.url + "/healthz").json()
        if health["stats"]["cancelled"] > before:
            break
        time.sleep(0.1)
    assert health["stats"]["cancelled"] == before + 1 and health["active"] == 0
    assert health["stats"]["completed"] >= 1  # (the earlier tests' requests)


def test_a_web_page_cannot_swap_the_adapter(server: Server) -> None:
    """Issue 16 item 4: what a browser can send (a cross-site text/plain POST, a DNS-rebinding
    Host) and what a local process without the token sends are all refused; nothing changes."""
    url = server.url + "/admin/adapter"
    before = httpx.get(url, headers=server.admin).json()
    revert = b'{"checkpoint_id": null, "path": null}'
    cross_site = httpx.post(
        url,
        content=revert,
        headers={"content-type": "text/plain", "origin": "https://evil.example"},
    )
    assert cross_site.status_code == 403 and "cross-origin" in cross_site.text
    plain = httpx.post(url, content=revert, headers={"content-type": "text/plain", **server.admin})
    assert plain.status_code == 415 and "application/json" in plain.text
    rebound = httpx.post(
        url,
        json={"checkpoint_id": None, "path": None},
        headers={"host": "attacker.example", **server.admin},
    )
    assert rebound.status_code == 403 and "rebinding" in rebound.text
    for headers in ({}, {ADMIN_HEADER: "guess"}):
        refused = httpx.post(url, json={"checkpoint_id": None, "path": None}, headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "invalid_admin_token"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=server.admin).json() == before and before["checkpoint_id"]
    token_file = server.home / "policy-admin.token"
    assert token_file.stat().st_mode & 0o777 == 0o600


def test_a_body_over_the_cap_gets_413(server: Server) -> None:
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 200_000}]}
    resp = httpx.post(server.url + "/v1/chat/completions", json=big)
    assert resp.status_code == 413 and "policy.max_body_bytes" in resp.text

    def chunked() -> Iterator[bytes]:  # no content-length: counted while it streams in
        for _ in range(30):
            yield b" " * 5000

    resp = httpx.post(
        server.url + "/v1/chat/completions",
        content=chunked(),
        headers={"content-type": "application/json"},
    )
    assert resp.status_code == 413


def test_an_open_bind_without_a_key_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "METACLAW_HOME": str(tmp_path), "METACLAW_CONFIG": "none.toml"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "metaclaw",
            "policy-server",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())  # the console wraps long lines
    assert "refusing to listen on 0.0.0.0 without policy.api_key" in message


def test_server_log_is_quiet(server: Server) -> None:
    log = (server.home / "logs" / "policy-server.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert json.loads(httpx.get(server.url + "/healthz").text)["status"] == "ok"
