"""Build and run the local policy server: resolve the model, load the promoted adapter, serve.

The model is resolved (and, on the very first start, converted from the packaged GGUF) before
uvicorn starts listening, so `/healthz` answering 200 means the model is loaded and serving.
"""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from metaclaw.config import Settings
from metaclaw.models import resolve_model_dir
from metaclaw.models.resolve import Notify
from metaclaw.proxy.guard import check_bind
from metaclaw.serving.app import create_app
from metaclaw.serving.checkpoints import CheckpointError, adapter_dir, promoted_checkpoint
from metaclaw.serving.engine import AdapterError, PolicyEngine

log = logging.getLogger("metaclaw.serving")


def policy_model_name(settings: Settings) -> str:
    """The model the policy server serves: `policy.model`, else `training.base_model`."""
    return settings.policy.model or settings.training.base_model


def build_engine(
    settings: Settings, *, notify: Notify | None = None, load_promoted: bool = True
) -> PolicyEngine:
    """A ready (not yet started) engine on the configured model, with the ledger's promoted
    checkpoint loaded when there is one that can be served locally."""
    import torch

    policy = settings.policy
    if policy.torch_threads:
        torch.set_num_threads(policy.torch_threads)
    name = policy_model_name(settings)
    model_dir = resolve_model_dir(name, settings.home, notify=notify)
    engine = PolicyEngine(
        model_dir,
        name=name,
        device=policy.device,
        dtype=policy.dtype,
        max_batch=policy.max_batch,
        max_queue=policy.max_queue,
        max_new_tokens=policy.max_new_tokens,
        max_context_tokens=policy.max_context_tokens,
        background_rows_while_interactive=policy.background_rows_while_interactive,
        background_prefill_tokens=policy.background_prefill_tokens,
    )
    if load_promoted:
        load_promoted_checkpoint(engine, settings, notify)
    return engine


def load_promoted_checkpoint(
    engine: PolicyEngine, settings: Settings, notify: Notify | None = None
) -> str | None:
    """Serve the ledger's promoted checkpoint; a broken one is reported and the base served."""
    found = promoted_checkpoint(settings.paths)
    if found is None:
        return None
    checkpoint_id, recorded = found
    try:
        path = adapter_dir(settings.home, checkpoint_id, recorded)
        engine.swap_blocking(checkpoint_id, path)
    except (CheckpointError, AdapterError, OSError, ValueError) as exc:
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
    settings: Settings, engine: PolicyEngine, host: str | None = None, port: int | None = None
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
