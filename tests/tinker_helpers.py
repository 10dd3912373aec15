"""Shared pieces of the Tinker-engine tests: the policy server on a socket in front of the
in-process Tinker stand-in (`FakeTinkerService`), and independent checks of what it served."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import torch

from metaclaw.config import Settings
from metaclaw.serving.app import create_app
from metaclaw.serving.server import build_engine
from metaclaw.serving.tinker_engine import TinkerEngine
from tests.helpers import free_port
from tests.served_app import ServedApp
from tests.stubs.training_fake import BigramBackend, FakeTinkerService
from tests.tiny_model import build_tokenizer

MESSAGES = [{"role": "user", "content": "Hello! How can I help you today?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
]


@dataclass
class Tinkered:
    service: FakeTinkerService
    engine: TinkerEngine
    settings: Settings
    url: str
    client: openai.OpenAI

    def health(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/healthz", timeout=10).json())

    def chat(self, **kwargs: Any) -> Any:
        body = {"model": "policy", "messages": MESSAGES, "max_tokens": 12, "seed": 7}
        return self.client.chat.completions.create(**{**body, **kwargs})


def tinker_settings(home: Any, port: int, **policy: Any) -> Settings:
    """Settings of a Tinker-engine policy server on `port` (the stand-in's base model)."""
    return Settings(
        home=home,
        policy={"engine": "tinker", "model": "fake/base", "port": port, **policy},
    )


def bigram_logprobs(
    weights: BigramBackend, prompt: list[int], completion: list[int], temperature: float
) -> list[float]:
    """What the weights give each completion token after the previous one, computed here."""
    previous = [prompt[-1], *completion[:-1]]
    with torch.no_grad():
        logp = torch.log_softmax(weights.table[previous] / max(temperature, 1e-6), dim=-1)
    return [float(logp[i, t]) for i, t in enumerate(completion)]


def trace(resp: Any) -> dict[str, Any]:
    return dict(resp.model_extra["metaclaw"])


@contextmanager
def tinker_server(home: Path, **policy: Any) -> Iterator[Tinkered]:
    """A Tinker-engine policy server built from `Settings` (`build_engine`) on a real socket."""
    service = FakeTinkerService(build_tokenizer())
    port = free_port()
    settings = tinker_settings(home, port, **policy)
    engine = build_engine(settings, tinker_service=service)
    assert isinstance(engine, TinkerEngine)
    app = create_app(engine, home=settings.home, request_timeout_s=30)
    with ServedApp(app, port) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="k", max_retries=0)
        yield Tinkered(service, engine, settings, server.url, client)
