"""Service configuration: the only reader of environment variables (``ESFT_*``, ``DATABASE_URL``)."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Annotated

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the API and the workers, with embedded-mode defaults (SQLite, filesystem broker, CPU).

    >>> Settings(data_dir="/tmp/x").database_url
    'sqlite:////tmp/x/esft.db'
    """

    model_config = SettingsConfigDict(env_prefix="ESFT_", extra="ignore", populate_by_name=True)

    data_dir: Path = Field(default=Path(".esft"), description="root of the database, broker, files and artifacts")
    database_url_override: str | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_URL", "ESFT_DATABASE_URL"),
        description="SQLAlchemy URL; default SQLite under data_dir",
    )
    broker_url_override: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ESFT_BROKER_URL", "CELERY_BROKER_URL"),
        description="Celery broker; default the kombu filesystem transport under data_dir",
    )
    auto_migrate: bool = Field(default=True, description="upgrade the database when the API starts")
    queue: str = Field(default="esft", description="Celery queue of the pipeline tasks (one per device pool)")
    broker_polling_interval: float = 0.1
    redis_visibility_timeout: int = 24 * 3600

    max_upload_bytes: int = Field(default=512 * 1024 * 1024, description="largest accepted dataset upload")
    max_json_bytes: int = Field(default=1024 * 1024, description="largest accepted non-upload request body")
    min_examples: int = Field(default=10, description="a training file needs at least this many valid examples")
    max_report_errors: int = 20
    model_roots: list[Path] | None = Field(
        default=None,
        description="directories base models may be registered from over HTTP; default data_dir/models",
    )

    # Deployment limits on job options (the library's static bounds come first; these cap what one job may ask
    # for on this deployment). A spec above a limit is a 400 naming the option; nothing is stored.
    max_epochs: int = Field(default=100, ge=1, description="largest n_epochs a job may ask for")
    max_steps: int = Field(default=100_000, ge=1, description="most optimizer steps a job may ask for or plan")
    max_batch_size: int = Field(default=256, ge=1, description="largest batch_size a job may ask for")
    max_grad_accum_steps: int = Field(default=256, ge=1, description="largest grad_accum_steps a job may ask for")
    max_seq_len: int = Field(default=32_768, ge=1, description="longest seq_len a job may ask for")
    max_sample_tokens: int = Field(default=1 << 22, ge=1, description="most tokens a job may score experts on")
    max_line_bytes: int = Field(default=8 * 1024 * 1024, ge=1, description="longest JSONL line accepted")
    max_json_depth: int = Field(default=32, ge=1, description="deepest JSON nesting accepted in a JSONL line")

    # Rate limits and quotas: these are the defaults; `esft limits set` overrides them per project or per key
    # (stored in the database). 0 turns a limit off.
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ESFT_REDIS_URL", "REDIS_URL"),
        description="Redis shared by every API process for rate-limit buckets; default the broker when it is Redis",
    )
    rate_limit_requests_per_second: float = Field(default=20.0, ge=0, description="requests/s per API key")
    rate_limit_burst: int = Field(default=60, ge=1, description="requests a key may send at once before 429s")
    quota_concurrent_devices: int = Field(
        default=16, ge=0, description="devices a project's unfinished jobs may hold (a job counts resources.gpus or 1)"
    )
    quota_stored_bytes: int = Field(
        default=100 * 1024**3, ge=0, description="bytes of files, adapters and full-copy models a project may store"
    )
    quota_pinned_bytes: int = Field(
        default=1024**3, ge=0, description="bytes of a project's adapters that may be pinned in the inference cache"
    )
    outbound_url_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="URL prefixes or host names the service may call for users (LLM judges, webhooks), "
        "comma-separated in the environment; empty: none",
    )
    log_format: str = Field(default="json", pattern="^(json|text)$", description="json: one object per log line")

    lease_ttl_s: float = Field(default=60.0, description="a running step whose heartbeat is older is re-enqueued")
    heartbeat_interval_s: float = Field(default=2.0, description="how often a running step renews its lease")
    reaper_interval_s: float = Field(default=15.0, description="how often the worker looks for stale jobs")
    requeue_undelivered_after_s: float = Field(
        default=6 * 3600, description="a dispatched step nobody picked up is re-enqueued after this long"
    )
    event_throttle_s: float = Field(default=1.0, description="at most one metrics event per this many seconds")
    eval_max_examples: int = Field(default=32, description="examples the evaluate step generates answers for")
    eval_max_new_tokens: int = Field(default=32, description="longest answer generated during evaluation")
    max_eval_examples: int = Field(default=1000, ge=1, description="most examples a job may ask to evaluate")
    judge_api_key: str | None = Field(default=None, description="bearer token sent to LLM-judge endpoints")
    judge_timeout_s: float = Field(default=30.0, gt=0, description="per call to an LLM-judge endpoint")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:N or cuda:N,M,... for this worker")
    max_gpus_per_job: int = Field(
        default=1,
        ge=1,
        le=64,
        description="most devices one job may ask for (resources.gpus): the devices of this deployment's largest "
        "worker; on CPU workers, the training processes one job may start",
    )
    stop_grace_s: float = Field(
        default=60.0, description="a multi-process job gets this long to checkpoint after SIGTERM, then SIGKILL"
    )
    parent_pid: int | None = Field(default=None, description="embedded worker: shut down when this process dies")

    db_pool_size: int = Field(default=10, ge=1, description="database connections each process keeps open")
    db_max_overflow: int = Field(default=20, ge=0, description="extra connections opened under load, then closed")
    db_pool_timeout_s: float = Field(default=10.0, gt=0, description="wait this long for a free connection, then 500")
    inference_request_timeout_s: float | None = Field(
        default=600.0, gt=0, description="deadline of a chat or text completion (504 `timeout` past it); null: none"
    )
    # At least 1: a full copy (FFT, merged LoRA) is only ever served by an engine of its own.
    inference_max_full_copy_engines: int = Field(
        default=2,
        ge=1,
        description="full-copy models kept loaded for inference (each a whole model in memory); loading one more "
        "closes the least recently used idle one, and answers 503 `engine_capacity` when all are busy",
    )

    def db_pool(self) -> dict[str, float]:
        """Connection-pool arguments for ``api.core.db.session.make_engine``."""
        return {
            "pool_size": self.db_pool_size,
            "max_overflow": self.db_max_overflow,
            "pool_timeout": self.db_pool_timeout_s,
        }

    @field_validator("outbound_url_allowlist", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """``a.internal,https://b/v1`` or a JSON list, from the environment."""
        if isinstance(value, str):
            text = value.strip()
            return json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",") if p.strip()]
        return value

    def default_limits(self) -> dict[str, float]:
        """Limit name (as stored in the database overrides) -> this deployment's default."""
        return {
            "requests_per_second": self.rate_limit_requests_per_second,
            "burst": self.rate_limit_burst,
            "concurrent_devices": self.quota_concurrent_devices,
            "stored_bytes": self.quota_stored_bytes,
            "pinned_bytes": self.quota_pinned_bytes,
        }

    @property
    def shared_redis_url(self) -> str | None:
        """Redis for state every API process shares: ``redis_url``, else the broker when it is Redis."""
        if self.redis_url:
            return self.redis_url
        broker = self.broker_url
        return broker if broker.startswith(("redis://", "rediss://")) else None

    def option_limits(self) -> dict[str, int]:
        """Option name -> the largest value this deployment accepts for it."""
        return {
            "n_epochs": self.max_epochs,
            "max_steps": self.max_steps,
            "batch_size": self.max_batch_size,
            "grad_accum_steps": self.max_grad_accum_steps,
            "seq_len": self.max_seq_len,
            "n_sample_tokens": self.max_sample_tokens,
        }

    @property
    def database_url(self) -> str:
        return self.database_url_override or f"sqlite:///{self.data_dir.resolve()}/esft.db"

    @property
    def broker_url(self) -> str:
        return self.broker_url_override or "filesystem://"

    @cached_property
    def broker_dir(self) -> Path:
        return self.data_dir.resolve() / "broker"

    @property
    def storage_dir(self) -> Path:
        return self.data_dir.resolve()

    @property
    def allowed_model_roots(self) -> list[Path]:
        roots = self.model_roots if self.model_roots is not None else [self.data_dir / "models"]
        return [Path(root).resolve() for root in roots]

    @property
    def api_key_file(self) -> Path:
        return self.data_dir.resolve() / "api_key"
