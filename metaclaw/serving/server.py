"""Build and run the policy server: pick the engine, load the promoted checkpoint, serve.

The local engine's model is resolved (and, on the very first start, converted from the packaged
GGUF) and the Tinker engine's base sampler opened before uvicorn starts listening, so `/healthz`
answering 200 means the engine is ready to serve.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from metaclaw.config import PolicySettings, Settings
from metaclaw.endpoints import policy_engine
from metaclaw.models import resolve_model_dir
from metaclaw.models.resolve import Notify
from metaclaw.proxy.guard import check_bind
from metaclaw.serving.app import create_app
from metaclaw.serving.checkpoints import CheckpointError, promoted_checkpoint
from metaclaw.serving.engine import AdapterError, PolicyEngine
from metaclaw.serving.protocol import Engine
from metaclaw.serving.requests import EngineError

if TYPE_CHECKING:
    from metaclaw.serving.tinker_engine import TinkerEngine

log = logging.getLogger("metaclaw.serving")


def policy_model_name(settings: Settings) -> str:
    """The model the policy server serves: `policy.model`, else `training.base_model`."""
    return settings.policy.model or settings.training.base_model


def build_engine(
    settings: Settings,
    *,
    notify: Notify | None = None,
    load_promoted: bool = True,
    tinker_service: Any | None = None,
) -> Engine:
    """A ready (not yet started) engine of the configured kind (`policy.engine`, default the
    training backend's), with the ledger's promoted checkpoint loaded when it can serve it.
    `tinker_service` replaces the `tinker.ServiceClient` (tests hand in a stand-in)."""
    engine: Engine
    if policy_engine(settings) == "tinker":
        engine = build_tinker_engine(settings, tinker_service)
    else:
        engine = build_local_engine(settings, notify)
    if load_promoted:
        load_promoted_checkpoint(engine, settings, notify)
    return engine


def build_local_engine(settings: Settings, notify: Notify | None = None) -> PolicyEngine:
    """The embedded model (resolved, converted on the first start) on this machine."""
    import torch

    policy = settings.policy
    if policy.torch_threads:
        torch.set_num_threads(policy.torch_threads)
    name = policy_model_name(settings)
    model_dir = resolve_model_dir(name, settings.home, notify=notify)
    return PolicyEngine(
        model_dir,
        name=name,
        device=policy.device,
        dtype=policy.dtype,
        **_limits(policy),
        background_rows_while_interactive=policy.background_rows_while_interactive,
        background_prefill_tokens=policy.background_prefill_tokens,
    )


def build_tinker_engine(settings: Settings, service: Any | None = None) -> TinkerEngine:
    """A Tinker sampler on the base model the trainer trains (`policy.model`, else the one
    `training.factory.tinker_base_model` picks), so promoted sampler weights fit it."""
    from metaclaw.serving.tinker_engine import TinkerEngine
    from metaclaw.training.factory import tinker_api_key, tinker_base_model

    policy, training = settings.policy, settings.training
    key = tinker_api_key(settings) if service is None else None
    if service is None:
        import tinker

        service = tinker.ServiceClient(base_url=training.tinker_base_url, api_key=key)
    base_model = policy.model or tinker_base_model(settings, key)
    return TinkerEngine.connect(
        service,
        base_model=base_model,
        name=base_model,
        call_timeout_s=training.tinker_timeout_s,
        sample_timeout_s=policy.tinker_sample_timeout_s,
        **_limits(policy),
    )


def _limits(policy: PolicySettings) -> dict[str, int]:
    """The limits both engines enforce alike (requests at once, waiting, tokens)."""
    return {
        "max_batch": policy.max_batch,
        "max_queue": policy.max_queue,
        "max_new_tokens": policy.max_new_tokens,
        "max_context_tokens": policy.max_context_tokens,
    }


def load_promoted_checkpoint(
    engine: Engine, settings: Settings, notify: Notify | None = None
) -> str | None:
    """Serve the ledger's promoted checkpoint; one this engine cannot load is reported and the
    base model served."""
    found = promoted_checkpoint(settings.paths)
    if found is None:
        return None
    checkpoint_id, recorded = found
    try:
        label, target = engine.locate(Path(settings.home), checkpoint_id, recorded)
        engine.swap_blocking(label, target)
    except (CheckpointError, AdapterError, EngineError, OSError, ValueError) as exc:
        message = f"promoted checkpoint {checkpoint_id} not loaded ({exc}); serving the base model"
        log.warning(message)
        if notify is not None:
            notify(message)
        return None
    return checkpoint_id


def check_policy_bind(settings: Settings, host: str | None = None) -> None:
    """Raise `OpenBindError` for a non-loopback bind without `policy.api_key`, unless allowed."""
    policy = settings.policy
    check_bind(
        host or policy.host,
        keyed=policy.api_key is not None,
        allow_open=policy.allow_open_bind,
        section="policy",
        key_setting="policy.api_key",
    )


def build_server(
    settings: Settings, engine: Engine, host: str | None = None, port: int | None = None
) -> uvicorn.Server:
    policy = settings.policy
    check_policy_bind(settings, host)
    app = create_app(
        engine,
        home=Path(settings.home),
        request_timeout_s=policy.request_timeout_s,
        api_key=policy.api_key.get_secret_value() if policy.api_key else None,
        max_body_bytes=policy.max_body_bytes,
        allowed_hosts=policy.allowed_hosts,
    )
    config = uvicorn.Config(
        app,
        host=host or policy.host,
        port=port or policy.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=30,
    )
    return uvicorn.Server(config)


def serve(
    settings: Settings,
    host: str | None = None,
    port: int | None = None,
    notify: Notify | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish on shutdown's grace period."""
    engine = build_engine(settings, notify=notify)
    build_server(settings, engine, host, port).run()
