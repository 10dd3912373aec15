"""The one configuration object.

Every default is written here once. Values come, in rising precedence, from these defaults,
the TOML file (`metaclaw.toml` in the working directory or the file named by
`$METACLAW_CONFIG`), and `METACLAW_*` environment variables (`__` separates nesting levels,
e.g. `METACLAW_UPSTREAM__BASE_URL`). Secrets are `SecretStr` so they never print by accident.

`MetaClawConfig` is the public name of `Settings` (one object, two names). The one precedence
rule, highest first: Python keyword arguments > `METACLAW_*` environment > the standard Azure
variables (`AZURE_OPENAI_API_KEY`, `AZURE_OPENAI_ENDPOINT`, `OPENAI_API_VERSION`) > the TOML
file > defaults. Flat keywords (`use_skills`, `lora_rank`, … see `config_keys.FRIENDLY_KEYS`)
map onto the sections; an unknown key is an error naming the closest valid key
(metaclaw/config_keys.py).
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from metaclaw.config_keys import (
    expand_friendly,
    mask_secrets_in_place,
    unknown_key_error,
    unknown_keys,
    valid_keys,
)

CONFIG_FILE_ENV = "METACLAW_CONFIG"
DEFAULT_CONFIG_FILE = "metaclaw.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UpstreamSettings(_Section):
    """The LLM the proxy forwards to when a request is not served by our own policy."""

    base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL, e.g. https://api.openai.com/v1"
    )
    api_key: SecretStr | None = None
    model: str | None = Field(
        default=None, description="Model name sent upstream; overrides the client's model."
    )
    anthropic_base_url: str | None = Field(
        default=None,
        description="Anthropic-compatible base URL for /v1/messages; when unset, Anthropic "
        "requests are translated to the OpenAI-compatible upstream.",
    )
    anthropic_api_key: SecretStr | None = None
    connect_timeout_s: float = 10.0
    timeout_s: float = Field(default=600.0, description="Read timeout for one upstream response.")
    max_connections: int = 512


class ProxySettings(_Section):
    host: str = "127.0.0.1"
    port: int = 30000
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Bearer keys clients must present (they act as the `default` agent); "
        "with none and no `metaclaw agents` keys there is no auth. "
        "Environment form: comma-separated.",
    )
    max_body_bytes: int = 10 * 1024 * 1024
    capture_timeout_s: float = Field(
        default=5.0,
        description="How long a response waits for its turn to be durable before it is sent "
        "anyway (the failure is counted and logged loudly).",
    )
    session_cache_size: int = Field(
        default=100_000, description="Conversations remembered for hash-chain session identity."
    )
    policy_models: list[str] = Field(
        default_factory=list,
        description="Requests for these model names are served by our policy server (routing).",
    )
    policy_share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of sessions (stable per session) served by our policy server, for "
        "A/B against the upstream. With no upstream configured, the policy serves everything.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (besides IP addresses and localhost) clients may reach the "
        "proxy by; other Host headers get 403 (DNS-rebinding protection).",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Proxy processes serving one port (sessions and the ledger are shared "
        "through METACLAW_HOME).",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins (e.g. 'app://my-agent') allowed to call the proxy besides "
        "its own; other Origin headers get 403.",
    )
    allow_open_bind: bool = Field(
        default=False,
        description="Allow a non-loopback host without api_keys (an open relay of the upstream "
        "key); refused otherwise.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value


class LedgerSettings(_Section):
    wal_rotate_bytes: int = 64 * 1024 * 1024
    wal_rotate_s: float = Field(
        default=5.0, description="An idle non-empty WAL segment is sealed after this long."
    )
    wal_queue_max: int = 100_000
    wal_queue_max_bytes: int = Field(
        default=256 * 1024 * 1024,
        description="Bytes of rows queued for the WAL writer at most; beyond it appends fail "
        "loudly (a stalled disk must not exhaust memory).",
    )
    wal_batch_max: int = 4096
    ingest_batch_bytes: int = Field(
        default=64 * 1024 * 1024,
        description="Ingest lands sealed WAL segments in batches of about this many bytes (at "
        "least one segment each), so its memory does not grow with the backlog.",
    )
    compact_min_files: int = Field(
        default=8, description="A date partition with at least this many files is compacted."
    )
    compact_grace_s: float = Field(
        default=600.0, description="Replaced Parquet files are deleted after this long."
    )
    root: str | None = Field(
        default=None,
        description="Where the Parquet files + manifest live: a local path or an fsspec URL such "
        "as s3://bucket/prefix (docs/scaling.md); default HOME/ledger. The WAL stays local.",
    )
    skills_root: str | None = Field(
        default=None,
        description="Where the LanceDB skill library lives: a local path or s3://…; default "
        "HOME/skills (see metaclaw.ledger.storage.lancedb_storage_options).",
    )


class JudgeSettings(_Section):
    """The process-reward judge of the `score` flow (metaclaw/scoring, docs/scoring.md).

    Set `base_url` + `model` for any OpenAI-compatible judge; `model` alone reuses the upstream's
    base URL and key. With neither, the judge is the local policy server (the embedded model,
    `local_default`); with `local_default = false` no LLM judge runs and rewards come from
    implicit + explicit feedback only. A 135M model is a weak judge: point the judge at a
    stronger model for real use.
    """

    base_url: str | None = None
    api_key: SecretStr | None = None
    model: str | None = None
    local_default: bool = Field(
        default=True, description="With nothing configured, judge with the local policy server."
    )
    votes: int = Field(default=3, ge=1, le=15, description="Independent votes per turn.")
    temperature: float = Field(default=0.6, ge=0, le=2, description="Sampling for the votes.")
    max_tokens: int = Field(default=512, ge=16, description="Most tokens one vote may use.")
    structured_output: bool = Field(
        default=True,
        description="Ask for the vote as JSON with a response_format JSON schema (the local "
        "policy server enforces it by constrained decoding); off: free text with Score/Reason "
        "lines, for judge servers that reject response_format.",
    )
    concurrency: int = Field(default=16, ge=1, description="Judge calls in flight at once.")
    timeout_s: float = Field(default=60.0, gt=0, description="Per-call timeout.")
    retries: int = Field(default=2, ge=0, description="Retries of a failed call (with backoff).")
    retry_backoff_s: float = Field(default=1.0, ge=0, description="First backoff; doubles.")
    retry_max_backoff_s: float = Field(
        default=30.0,
        ge=0,
        description="Longest wait before a retry (a server's Retry-After included): a busy "
        "policy server is waited for, not hammered.",
    )
    max_calls_per_run: int = Field(
        default=3000, ge=0, description="Cost budget: most judge calls (retries included) per run."
    )
    session_idle_s: float = Field(
        default=600.0,
        ge=0,
        description="A session's last turn is judged (and abandonment decided) once the session "
        "has been idle this long.",
    )
    version_tag: str = Field(
        default="", description="Appended to the scorer version; change it to re-judge history."
    )


class RewardModelSettings(_Section):
    """The adaptive reward model that triages the judge (metaclaw/scoring, docs/scoring.md).

    Retrained by the `score` flow from the ledger's labels (explicit feedback first, then judge
    verdicts, then implicit signals, each with its weight); a turn it is confident about gets a
    `reward_model` reward instead of m judge calls. Nothing changes until `min_labels` labels
    exist: every turn is judged, which is where the first labels come from.
    """

    enabled: bool = Field(default=True, description="Train the model and let it triage.")
    confidence: float = Field(
        default=0.7,
        ge=0.5,
        le=1.0,
        description="The model scores a turn when its posterior-averaged P(good) or P(bad) "
        "reaches this; below it the judge is called. It learns from noisy verdicts, so even a "
        "model that is always right is only as sure as the judge is reliable (~0.9 for three "
        "votes each right 80% of the time): keep this below that.",
    )
    audit_share: float = Field(
        default=0.1,
        ge=0.0,
        le=1.0,
        description="Share of confident turns judged anyway (agreement audit and new labels).",
    )
    one_vote_confirms: bool = Field(
        default=True,
        description="A turn the model is unsure of gets one judge vote first; when it agrees "
        "with the model's lean that vote is the verdict, otherwise the rest of the panel is "
        "asked and the majority of all judge.votes decides. Audited turns always get the "
        "whole panel.",
    )
    min_labels: int = Field(default=200, ge=10, description="Labels before the first model.")
    retrain_new_labels: int = Field(
        default=200, ge=1, description="New labels since the current model that trigger a retrain."
    )
    retrain_interval_s: float = Field(
        default=3600.0, ge=0, description="Retrain at least this often while new labels land."
    )
    max_labels: int = Field(default=20_000, ge=10, description="Most recent labels trained on.")
    holdout_share: float = Field(
        default=0.2, gt=0.0, lt=1.0, description="Labels held out for the model's figures."
    )
    l2: float = Field(
        default=10.0, gt=0, description="L2 penalty (the Gaussian prior's precision)."
    )
    explicit_weight: float = Field(default=1.0, ge=0, description="Weight of a user's label.")
    judge_weight: float = Field(
        default=0.5,
        ge=0,
        description="Weight of a judge verdict, times how decisive its panel was (3-0 counts "
        "more than 2-1: see judge_vote_accuracy).",
    )
    judge_vote_accuracy: float = Field(
        default=0.8,
        gt=0.5,
        lt=1.0,
        description="The assumed chance that one judge vote is right: a verdict whose majority "
        "led by d votes is right with probability q^d / (q^d + (1-q)^d), and its label counts "
        "2r - 1 of a sure one (0.97 for 3-0, 0.6 for 2-1 or a single vote at 0.8).",
    )
    implicit_weight: float = Field(
        default=0.25, ge=0, description="Weight of an implicit-signal label."
    )


class TrainingSettings(_Section):
    """LoRA training of the `train` flow (metaclaw/training): backend, loss, optimiser, guards.

    The loss formulas and the on/off-policy routing are documented in metaclaw/training/losses.py
    and samples.py; every value here is recorded in each `train_steps` row (`metrics.config`).
    """

    backend: Literal["local", "tinker"] = "local"
    base_model: str = Field(
        default="HuggingFaceTB/SmolLM2-135M-Instruct",
        description="local: an HF model directory or a name metaclaw.models resolves; "
        "tinker: a Tinker base model name.",
    )
    lora_rank: int = Field(default=32, ge=1)
    lora_alpha: int = Field(default=32, ge=1, description="LoRA scaling is alpha / rank.")
    batch_size: int = Field(default=8, ge=1, description="Sequences per micro-batch (step).")
    loss_fn: Literal["cross_entropy", "importance_sampling", "ppo", "cispo", "distillation"] = (
        Field(
            default="ppo",
            description="Clipped by default: served turns are up to "
            "max_staleness steps behind the learner, so the ratio must be bounded.",
        )
    )
    learning_rate: float = Field(default=1e-4, gt=0, description="AdamW LR, sent every step.")
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip_norm: float = Field(default=0.0, ge=0, description="0 disables clipping.")
    clip_low: float | None = Field(
        default=None, description="ppo/cispo ratio lower bound (default 0.8 ppo, 0.0 cispo)."
    )
    clip_high: float | None = Field(
        default=None, description="ppo/cispo ratio upper bound (default 1.2 ppo, 4.0 cispo)."
    )
    kl_coef: float = Field(
        default=1.0, ge=0, description="distillation: advantage = kl_coef·(teacher − student)."
    )
    max_kl: float = Field(
        default=0.05,
        gt=0,
        description="Abort a step when the sampler→learner KL on its importance-weighted tokens "
        "exceeds this before the update: they did not come from this learner's recent lineage "
        "(healthy ≤ 2.4e-3 measured; see docs/training.md).",
    )
    max_update_kl: float = Field(
        default=0.5,
        gt=0,
        description="Discard an update that moves its own batch by a KL above this (a diverging "
        "step; healthy steps measured 5e-3 – 0.12).",
    )
    temperature: float = Field(
        default=1.0,
        description="Must be 1: the learner scores the untempered softmax (as Tinker does), so "
        "only turns served at T = 1 and top_p = 1 are importance-weighted.",
    )
    max_staleness: int = Field(
        default=4,
        ge=0,
        description="K: a policy turn is importance-weighted only when the checkpoint that "
        "served it is on the learner's lineage at most K steps behind it; else off-policy.",
    )
    max_unpromoted_steps: int = Field(
        default=4,
        ge=1,
        description="N: the learner accumulates at most N steps on top of the promoted "
        "checkpoint without a promotion, then resets to it (bounds drift).",
    )
    stall_after_failures: int = Field(
        default=3,
        ge=1,
        description="Consecutive failed steps from one state (same config) that stall training.",
    )
    stall_after_rejections: int = Field(
        default=12,
        ge=1,
        description="Candidates rejected since the last promotion that stall training.",
    )
    baseline_decay: float = Field(
        default=0.8,
        ge=0,
        lt=1,
        description="Reward baseline: EMA of each step's mean RL reward (bias-corrected).",
    )
    nice: int = Field(
        default=10,
        ge=0,
        le=19,
        description="OS niceness the train and deploy flows give their process while they work, "
        "so the policy server (users first) wins the CPU (metaclaw/runtime_priority.py).",
    )
    threads: int = Field(
        default=0,
        ge=0,
        description="torch threads while training or gating; 0: half the CPU cores (at least "
        "1), leaving the rest to the policy server.",
    )

    @field_validator("temperature")
    @classmethod
    def _learner_temperature(cls, value: float) -> float:
        if value != 1.0:
            raise ValueError(
                "training.temperature must be 1: the learner scores the untempered "
                "softmax (as Tinker does); turns served at another temperature are "
                "routed off-policy, not importance-weighted"
            )
        return value

    @model_validator(mode="after")
    def _staleness_covers_the_unpromoted_steps(self) -> TrainingSettings:
        if self.max_staleness < self.max_unpromoted_steps - 1:
            raise ValueError(
                f"training.max_staleness ({self.max_staleness}) must be at least "
                f"training.max_unpromoted_steps - 1 ({self.max_unpromoted_steps - 1}): the "
                "learner may be that many steps ahead of the served (promoted) policy, whose "
                "turns must stay importance-weighted"
            )
        return self

    min_reward_for_sft: float = Field(
        default=0.5, description="Off-policy turns train (cross-entropy) only at this reward."
    )
    max_seq_len: int = Field(
        default=4096,
        ge=2,
        description="Longest training sequence; at least policy.max_context_tokens (every served "
        "turn fits). Longer rendered turns keep the system head + the most recent messages.",
    )
    max_steps_per_run: int = Field(default=1, ge=1, description="Steps one flow run may take.")
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    teacher_base_url: str | None = Field(
        default=None, description="distillation: OpenAI-compatible /v1 with echo logprobs."
    )
    teacher_model: str | None = Field(
        default=None, description="distillation: teacher model (a Tinker name/path on tinker)."
    )
    teacher_api_key: SecretStr | None = None
    hint_rollouts: int = Field(
        default=2,
        ge=0,
        description="Replies the local policy server writes, held to the user's rule, per "
        "corrected turn whose hint states a reply shape (context distillation; 0 disables). "
        "See docs/training.md.",
    )
    hint_rollout_max_tokens: int = Field(
        default=64, ge=1, description="Longest rule-holding reply; an unfinished one is dropped."
    )
    hint_rollout_temperature: float = Field(
        default=0.3,
        ge=0.0,
        le=2.0,
        description="Sampling temperature of the rule-holding replies after the first (greedy) "
        "one: low, so they stay close to the policy's own most likely reply and the update "
        "moves what the rule asks for, not the wording. See docs/training.md.",
    )
    tinker_base_url: str | None = Field(default=None, description="Else $TINKER_BASE_URL.")
    tinker_api_key: SecretStr | None = Field(default=None, description="Else $TINKER_API_KEY.")
    tinker_timeout_s: float = Field(default=600.0, gt=0, description="Deadline per Tinker call.")
    tinker_state_ttl_s: int | None = Field(
        default=None, description="TTL of Tinker training states (None: never expire)."
    )
    concurrency_lease_s: float = Field(
        default=600.0, gt=0, description="Lease of the global 'metaclaw-training' slot."
    )


class FlowSettings(_Section):
    ingest_interval_s: int = 30
    score_interval_s: int = 60
    train_interval_s: int = 120
    diagnose_interval_s: int = 300
    evolve_interval_s: int = 600
    deploy_interval_s: int = 120
    evolve_enabled: bool = Field(
        default=True,
        description="Skill evolution on schedule (MetaClawConfig(enable_skill_evolution=...)); "
        "off pauses the evolve deployment (an on-demand `metaclaw run evolve` still works).",
    )
    task_runner: Literal["thread", "dask"] = Field(
        default="thread",
        description="Where fan-out tasks (score batches, diagnoses, backfill partitions) run: "
        "a thread pool in the flow's process, or a Dask cluster (flows/runners.py).",
    )
    dask_address: str | None = Field(
        default=None,
        description="Scheduler of an existing Dask cluster, e.g. tcp://10.0.0.5:8786; unset "
        "with task_runner=dask starts a temporary local cluster per flow run.",
    )
    thread_workers: int = Field(
        default=4, ge=1, description="Fan-out tasks at once with task_runner=thread."
    )


class ReplaySettings(_Section):
    """Backfill of historical logs (`metaclaw replay`, flow `backfill`)."""

    batch_rows: int = Field(default=1000, description="Turns per durable WAL append.")
    concurrency: int = Field(
        default=2, ge=1, description="Backfill partitions imported at the same time."
    )
    partition_files: int = Field(default=200, ge=1, description="Most files in one partition.")
    partition_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1, description="Most bytes of logs in one partition."
    )
    max_record_bytes: int = Field(
        default=32 * 1024 * 1024,
        description="A log line (or SQLite event) larger than this is skipped and reported.",
    )
    max_inline_image_bytes: int = Field(
        default=256 * 1024,
        description="Images larger than this are replaced by a placeholder in imported requests.",
    )
    ingest_every_bytes: int = Field(
        default=32 * 1024 * 1024,
        description="Run ledger ingest whenever the WAL holds this much, so memory stays flat "
        "however long the history (ingest reads the WAL whole).",
    )
    allowed_roots: list[Path] = Field(
        default_factory=lambda: [Path("~/.openclaw")],
        description="Folders the backfill flow may read: its `path` parameter (a flow run anyone "
        "with API access can start) must lie under one of them, symlinks resolved; "
        "METACLAW_HOME/imports is always allowed.",
    )


class PolicySettings(_Section):
    """The local policy server (`metaclaw policy-server`, metaclaw/serving): the embedded model
    plus the promoted LoRA behind an OpenAI-compatible API; the default upstream and judge."""

    host: str = "127.0.0.1"
    port: int = 30001
    engine: Literal["local", "tinker"] | None = Field(
        default=None,
        description="What generates: local (the embedded model + LoRA, torch) or tinker (a "
        "Tinker SamplingClient on the promoted sampler weights). Default: training.backend.",
    )
    tinker_sample_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="tinker engine: most seconds one sample call may take before the request "
        "fails with an OpenAI-shaped 503 (a user waits on it).",
    )
    model: str | None = Field(
        default=None,
        description="Model served (default training.base_model): a packaged model, an HF "
        "model directory or a .gguf file (see metaclaw.models).",
    )
    device: str = Field(default="cpu", description="torch device, e.g. cpu or cuda.")
    dtype: Literal["float32", "bfloat16"] = Field(
        default="float32", description="bfloat16 is ~1.7× faster on CPUs with avx512_bf16."
    )
    max_queue: int = Field(
        default=64, ge=1, description="Waiting requests per priority class before 503s."
    )
    max_batch: int = Field(default=8, ge=1, description="Requests generating at once.")
    max_new_tokens: int = Field(default=1024, ge=1, description="Cap on tokens per completion.")
    max_context_tokens: int = Field(default=4096, ge=16, description="Prompt + completion cap.")
    request_timeout_s: float = Field(default=600.0, gt=0, description="Queue wait + generation.")
    torch_threads: int = Field(default=0, ge=0, description="0: torch's default.")
    background_rows_while_interactive: int = Field(
        default=0,
        ge=0,
        description="Background requests (X-MetaClaw-Priority: background: judge, critic, gate) "
        "that keep generating while a user's request runs or waits; the rest pause. 0 on a "
        "small CPU (each row slows every user token); up to max_batch on a GPU.",
    )
    background_prefill_tokens: int = Field(
        default=512,
        ge=0,
        description="Most background prompt tokens prefilled per decode round (at least one "
        "request; 0: no limit): a user arriving during a prefill waits for it.",
    )
    api_key: SecretStr | None = Field(default=None, description="Bearer key, when set.")
    max_body_bytes: int = Field(
        default=10 * 1024 * 1024, ge=1024, description="Largest request body; bigger ones get 413."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names (besides IP addresses and localhost) clients may use; others "
        "get 403 (DNS-rebinding protection).",
    )
    allow_open_bind: bool = Field(
        default=False, description="Allow a non-loopback host without api_key; refused otherwise."
    )


class SkillsSettings(_Section):
    """The skill library (metaclaw/skills, docs/skills.md): retrieval on the proxy's hot path,
    efficacy statistics, retirement and the evolution limits."""

    enabled: bool = Field(default=True, description="Inject retrieved skills into requests.")
    top_k: int = Field(default=3, ge=0, le=50, description="Most skills injected per turn.")
    min_similarity: float = Field(
        default=0.25, ge=-1, le=1, description="Hybrid similarity a skill needs to be injected."
    )
    text_weight: float = Field(
        default=0.3, ge=0, le=1, description="Share of full-text (BM25) in hybrid similarity."
    )
    token_budget: int = Field(default=800, ge=0, description="Most tokens of the injected block.")
    prior_alpha: float = Field(default=2.0, gt=0, description="Beta prior: pseudo-successes.")
    prior_beta: float = Field(default=2.0, gt=0, description="Beta prior: pseudo-failures.")
    retire_min_uses: int = Field(
        default=20, ge=1, description="Injected turns with a reward before auto-retirement."
    )
    retire_z: float = Field(
        default=1.96, ge=0, description="Retire when (with − without) + z·se < 0: confidence."
    )
    efficacy_window_days: int = Field(
        default=30, ge=1, description="Rewarded turns this recent feed efficacy statistics."
    )
    embedding: Literal["static-minilm", "minilm"] = Field(
        default="static-minilm",
        description="static-minilm: numpy token table from the packaged all-MiniLM-L6-v2 "
        "(~0.05 ms/query); minilm: the full model via sentence-transformers (~12 ms/query).",
    )
    embeddings_dir: Path | None = Field(
        default=None, description="Cache of the static table (default HOME/embeddings)."
    )
    refresh_interval_s: float = Field(
        default=2.0, ge=0, description="How often the proxy checks the library for changes."
    )
    ivf_min_skills: int = Field(
        default=20_000, ge=1, description="Active skills above which search uses an IVF index."
    )
    failure_threshold: float = Field(
        default=0.0, ge=-1, le=1, description="A turn whose reward is below this is a failure."
    )
    dedup_similarity: float = Field(
        default=0.92, ge=0, le=1, description="Similarity at which a new skill revises one."
    )
    max_instruction_chars: int = Field(default=4000, ge=100, description="Skill size limit.")
    max_turns_per_diagnosis: int = Field(
        default=8, ge=1, description="Failed turns of one session diagnosed together."
    )
    max_new_skills_per_run: int = Field(default=5, ge=0, description="Evolution write budget.")
    promotion: Literal["auto", "manual"] = Field(
        default="auto",
        description="auto: a proposed (quarantined) skill becomes active for every session once "
        "its efficacy clears the bar and the critic's safety scan passed; manual: only "
        "`metaclaw skills approve` promotes.",
    )
    promote_min_uses: int = Field(
        default=10, ge=1, description="Rewarded injected turns before a proposal can be promoted."
    )
    promote_z: float = Field(
        default=1.0, ge=0, description="Promote when (with − without) − z·se > 0."
    )
    trial_share: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of other sessions (by hash) that also get a proposed skill (A/B); 0: "
        "only the sessions whose failures produced it.",
    )


class CriticSettings(_Section):
    """The critic LLM of the `diagnose` and `evolve` flows: any OpenAI-compatible endpoint.

    `base_url` + `model` name it; `model` alone reuses the upstream's base URL and key. With no
    model, the critic is the local policy server (`local_default`); with `local_default = false`
    the flows skip with a message saying what to set.
    """

    base_url: str | None = None
    api_key: SecretStr | None = None
    model: str | None = None
    local_default: bool = Field(
        default=True, description="With nothing configured, use the local policy server."
    )
    temperature: float = Field(default=0.2, ge=0, le=2)
    max_tokens: int = Field(default=1500, ge=64, description="Most tokens one critic reply uses.")
    json_schema: bool = Field(
        default=True,
        description="Send the answer's JSON schema as response_format (the local policy server "
        "enforces it by constrained decoding); off: plain JSON mode, for servers without "
        "json_schema support.",
    )
    timeout_s: float = Field(default=120.0, gt=0, description="Per-call timeout.")
    retries: int = Field(default=2, ge=0, description="Retries of a failed or invalid reply.")
    max_calls_per_run: int = Field(default=50, ge=0, description="Cost budget per flow run.")


class ModelPrice(_Section):
    """A model's price in USD per million tokens."""

    input: float = Field(ge=0, description="USD per 1M input (prompt) tokens.")
    output: float = Field(ge=0, description="USD per 1M output (completion) tokens.")


# List prices (USD per 1M tokens, standard tier, no caching or batch discounts) as published by
# OpenAI and Anthropic on 2025-06-15. Providers change them and you may pay something else
# (Azure, negotiated rates): override them in `[costs.prices]`. A model name matches its exact
# entry, else the longest entry it starts with ("gpt-4o-2024-08-06" -> "gpt-4o").
DEFAULT_PRICES: dict[str, ModelPrice] = {
    "gpt-4o": ModelPrice(input=2.50, output=10.00),
    "gpt-4o-mini": ModelPrice(input=0.15, output=0.60),
    "gpt-4.1": ModelPrice(input=2.00, output=8.00),
    "gpt-4.1-mini": ModelPrice(input=0.40, output=1.60),
    "gpt-4.1-nano": ModelPrice(input=0.10, output=0.40),
    "o3-mini": ModelPrice(input=1.10, output=4.40),
    "o4-mini": ModelPrice(input=1.10, output=4.40),
    "claude-opus-4": ModelPrice(input=15.00, output=75.00),
    "claude-sonnet-4": ModelPrice(input=3.00, output=15.00),
    "claude-3-7-sonnet": ModelPrice(input=3.00, output=15.00),
    "claude-3-5-sonnet": ModelPrice(input=3.00, output=15.00),
    "claude-3-5-haiku": ModelPrice(input=0.80, output=4.00),
}


class CostSettings(_Section):
    """What LLM calls cost (metaclaw/costs, docs/scoring.md "Costs") and the pipeline's daily
    budget: as the judge and critic spend approach it, the pipeline degrades instead of
    overspending (one judge vote, then no judge or critic calls until the next UTC day)."""

    prices: dict[str, ModelPrice] = Field(
        default_factory=dict,
        description="Per-model prices (USD per 1M tokens) merged over the built-in list prices; "
        "a model with no price has an unknown cost, never 0. Calls to the local policy server "
        "cost 0.",
    )
    daily_budget_usd: float | None = Field(
        default=None,
        gt=0,
        description="Most the judge and critic may spend per UTC day; none: no limit. Users' own "
        "calls are counted in the totals but not against it.",
    )
    degrade_share: float = Field(
        default=0.8,
        gt=0,
        le=1,
        description="Share of the daily budget from which the judge casts one vote per turn "
        "instead of judge.votes.",
    )

    @property
    def price_table(self) -> dict[str, ModelPrice]:
        return {**DEFAULT_PRICES, **self.prices}


class DeploySettings(_Section):
    """The gate of the `deploy` flow (metaclaw/deploy, docs/deploy.md): a candidate checkpoint is
    promoted only when it beats the promoted policy (or the base model) on held-out prompts in a
    sign test significant at the α this decision may spend, and no guard trips."""

    min_win_rate: float = Field(
        default=0.5,
        ge=0,
        lt=1,
        description="Null hypothesis of the sign test: P(candidate wins a decided prompt) <= this.",
    )
    alpha: float = Field(
        default=0.05,
        gt=0,
        lt=0.5,
        description="Chance of any false promotion against one current policy, over all its "
        "decisions: the k-th decision against it is tested at alpha·6/(π²k²).",
    )
    confidence: float = Field(
        default=0.95,
        gt=0.5,
        lt=1,
        description="Two-sided confidence of the Wilson interval reported with the win rate.",
    )
    eval_fraction: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description="Share of sessions held out from training for evaluation (a hash of "
        "session_id decides, and their prompts are kept out of training in every session; see "
        "metaclaw.deploy.split). 0: evaluate on prompts_file only.",
    )
    split_salt: str = Field(
        default="metaclaw-eval-v1",
        description="Salt of the held-out split; changing it (or eval_fraction) moves turns "
        "between the splits, so evaluations before and after are not comparable.",
    )
    eval_size: int = Field(default=64, ge=1, description="Most held-out prompts per evaluation.")
    min_eval_prompts: int = Field(
        default=8, ge=1, description="With fewer eval prompts the candidate waits (no verdict)."
    )
    prompts_file: Path | None = Field(
        default=None,
        description='JSONL of fixed eval prompts added to every evaluation: {"messages": [...]} '
        'or {"prompt": "..."} per line.',
    )
    samples_per_prompt: int = Field(default=1, ge=1, le=16, description="Pairs per prompt.")
    max_new_tokens: int = Field(default=256, ge=1, description="Cap per sampled reply.")
    max_prompt_tokens: int = Field(
        default=3840,
        ge=16,
        description="Longer prompts are skipped; with max_new_tokens at most "
        "policy.max_context_tokens (validated), so every served prompt length can be evaluated.",
    )
    temperature: float = Field(
        default=1.0,
        ge=0,
        le=2,
        description="Sampling temperature of both policies (1 = as served by default, and the "
        "KL estimate is exact only at 1).",
    )
    seed: int = Field(default=0, description="Both policies draw with the same seeds per prompt.")
    judge_temperature: float = Field(default=0.0, ge=0, le=2, description="Pairwise judge.")
    judge_max_tokens: int = Field(default=256, ge=16, description="Most tokens per verdict.")
    judge_base_url: str | None = Field(
        default=None,
        description="A separate gate judge (OpenAI-compatible), so a policy that learned to "
        "please the scoring judge does not pass the gate by the same trick; unset: the scoring "
        "judge.",
    )
    judge_model: str | None = Field(
        default=None, description="The gate judge's model (required with judge_base_url)."
    )
    judge_api_key: SecretStr | None = None
    stated_rules: bool = Field(
        default=True,
        description="Rules users keep stating in corrections and feedback ('always end with "
        "…', 'at most N words') decide a pair when exactly one reply keeps them; the judge "
        "decides the rest (docs/deploy.md).",
    )
    stated_rule_support: int = Field(
        default=2,
        ge=1,
        description="A rule counts once users stated it about this many distinct turns.",
    )
    stated_rule_turns: int = Field(
        default=500, ge=1, description="How many of the newest turns are read for stated rules."
    )
    reward_model_pairs: bool = Field(
        default=False,
        description="Let the reward model in force decide a pair (after the stated rule) when "
        "it is sure, at reward_model.confidence, that exactly one reply is good; the rest go "
        "to the judge. Off by default: the model learned from the same users' labels the "
        "policy was trained on (docs/deploy.md).",
    )
    max_kl: float = Field(
        default=1.0,
        gt=0,
        description="Guard: mean per-token KL(candidate ‖ base) in nats on the candidate's "
        "samples.",
    )
    max_length_ratio: float = Field(
        default=3.0,
        gt=1,
        description="Guard: candidate mean reply length / the current policy's.",
    )
    max_degenerate_fraction: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="Guard: share of empty or degenerate (looping) candidate replies allowed "
        "when it is also worse than the current policy's share.",
    )
    notify_timeout_s: float = Field(
        default=30.0, gt=0, description="How long a promotion waits for the policy server swap."
    )


class AzureOpenAISettings(_Section):
    """Azure OpenAI (the `openai` package's AzureOpenAI client) for the judge, the critic and,
    when listed in `use_for`, the proxy upstream (metaclaw/providers.py).

    Naming a deployment opts in (`MetaClawConfig(azure_openai_deployment="gpt-5.2")`); a role
    whose own `base_url` is set keeps it. Endpoint, key and API version also come from the
    standard `AZURE_OPENAI_ENDPOINT`, `AZURE_OPENAI_API_KEY`, `OPENAI_API_VERSION` variables.
    """

    deployment: str | None = Field(
        default=None, description="Deployment name used as the model (a role's model wins)."
    )
    endpoint: str | None = Field(
        default=None, description="Resource endpoint, e.g. https://NAME.openai.azure.com"
    )
    api_key: SecretStr | None = None
    api_version: str = Field(default="2024-10-21", description="The api-version query value.")
    use_for: list[Literal["judge", "critic", "upstream"]] = Field(
        default=["judge", "critic"],  # pydantic copies a mutable default per instance
        description="Roles served by the Azure deployment when it is set.",
    )


class _AzureStandardEnv(BaseSettings):
    """The variable names the Azure docs and the `openai` SDK use, read once, here."""

    model_config = SettingsConfigDict(extra="ignore")

    endpoint: str | None = Field(default=None, validation_alias="AZURE_OPENAI_ENDPOINT")
    api_key: SecretStr | None = Field(default=None, validation_alias="AZURE_OPENAI_API_KEY")
    api_version: str | None = Field(default=None, validation_alias="OPENAI_API_VERSION")


class AzureStandardEnvSource(PydanticBaseSettingsSource):
    """`azure.*` from the standard Azure variables (below `METACLAW_*`, above the file)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = _AzureStandardEnv().model_dump(exclude_none=True)
        return {"azure": values} if values else {}


class Settings(BaseSettings):
    """MetaClaw's configuration; build it with `Settings()` (reads file + environment)."""

    model_config = SettingsConfigDict(
        env_prefix="METACLAW_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(default=Path(".metaclaw"), description="Data directory.")
    upstream: UpstreamSettings = Field(default_factory=UpstreamSettings)
    proxy: ProxySettings = Field(default_factory=ProxySettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    judge: JudgeSettings = Field(default_factory=JudgeSettings)
    reward_model: RewardModelSettings = Field(default_factory=RewardModelSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    flows: FlowSettings = Field(default_factory=FlowSettings)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    skills: SkillsSettings = Field(default_factory=SkillsSettings)
    critic: CriticSettings = Field(default_factory=CriticSettings)
    deploy: DeploySettings = Field(default_factory=DeploySettings)
    costs: CostSettings = Field(default_factory=CostSettings)
    azure: AzureOpenAISettings = Field(default_factory=AzureOpenAISettings)

    @model_validator(mode="before")
    @classmethod
    def _friendly_keys(cls, data: Any) -> Any:
        """Flat keywords → sections; unknown keys fail naming the closest valid key (a typo
        must never fall back silently to a default)."""
        if not isinstance(data, dict):
            return data
        expanded = expand_friendly(data)
        unknown = unknown_keys(cls, expanded)
        if unknown:
            mask_secrets_in_place(data)  # pydantic quotes the input in the error it prints
            keys = valid_keys(cls)
            raise ValueError("; ".join(unknown_key_error(k, keys) for k in unknown))
        return expanded

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file_path())
        return (init_settings, env_settings, AzureStandardEnvSource(settings_cls), toml)

    @model_validator(mode="after")
    def _length_limits_agree(self) -> Settings:
        """The three length limits describe one sequence budget; refuse a config in which a
        served turn could not be trained on or an eval prompt could not be served."""
        context = self.policy.max_context_tokens
        if self.training.max_seq_len < context:
            raise ValueError(
                f"training.max_seq_len ({self.training.max_seq_len}) must be at least "
                f"policy.max_context_tokens ({context}): every turn the policy serves must fit "
                "a training sequence"
            )
        if self.deploy.max_prompt_tokens + self.deploy.max_new_tokens > context:
            raise ValueError(
                f"deploy.max_prompt_tokens ({self.deploy.max_prompt_tokens}) + "
                f"deploy.max_new_tokens ({self.deploy.max_new_tokens}) must be at most "
                f"policy.max_context_tokens ({context}): the gate samples through the policy"
            )
        return self

    @cached_property
    def paths(self) -> LedgerPaths:
        return LedgerPaths(
            self.home,
            root=self.ledger.root,
            skills_root=self.ledger.skills_root,
            prices=self.costs.price_table,
        )


MetaClawConfig = Settings  # the public name (`from metaclaw import MetaClawConfig`)


class LedgerPaths:
    """Where each part of the data directory lives (one place, so nothing hard-codes a path)."""

    def __init__(
        self,
        home: Path,
        root: str | None = None,
        skills_root: str | None = None,
        prices: dict[str, ModelPrice] | None = None,
    ) -> None:
        self.home = Path(home)
        # The price table every ledger connection's `costs` view reads (`costs.prices` over the
        # defaults): it travels with the paths so `metaclaw sql` and the flows agree on it.
        self.prices = DEFAULT_PRICES if prices is None else prices
        self.wal = self.home / "wal"
        # `root`: the ledger's Parquet + manifest, a path or a URL (metaclaw/ledger/storage.py).
        # For a URL, `ledger` stays a local directory holding only this machine's ingest lock.
        self.root = str(root) if root else str(self.home / "ledger")
        remote = "://" in self.root and not self.root.startswith("file://")
        self.ledger = self.home / "ledger" if remote else Path(self.root.removeprefix("file://"))
        self.manifest = self.ledger / "_manifest.json"
        self.lock = self.ledger / ".lock"
        self.prefect = self.home / "prefect"
        self.logs = self.home / "logs"
        self.skills = self.home / "skills"  # LanceDB skill library
        self.skills_uri = str(skills_root) if skills_root else str(self.skills)  # or s3://…
        self.embeddings = self.home / "embeddings"  # cached static embedding tables
        self.reward_models = self.home / "reward_models"  # reward model versions (.npz + .json)
        self.checkpoints = self.home / "checkpoints"  # LoRA adapters: checkpoints/<id>/
        self.dead_letters = self.home / "dead_letters"  # rows ingest could not store (JSONL)


def config_file_path() -> Path:
    """The TOML file in force: `$METACLAW_CONFIG`, else `./metaclaw.toml` (may not exist)."""
    return Path(os.environ.get(CONFIG_FILE_ENV, DEFAULT_CONFIG_FILE))
