"""Service configuration: the only reader of environment variables (``ESFT_*``, ``DATABASE_URL``)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    outbound_url_allowlist: list[str] = Field(
        default_factory=list,
        description="URL prefixes or host names the service may call for users (LLM judges, webhooks); "
        "empty: none",
    )
    judge_api_key: str | None = Field(default=None, description="bearer token sent to LLM-judge endpoints")
    judge_timeout_s: float = Field(default=30.0, gt=0, description="per call to an LLM-judge endpoint")
    device: str = Field(default="auto", description="auto, cpu, cuda or cuda:N for this worker")
    parent_pid: int | None = Field(default=None, description="embedded worker: shut down when this process dies")

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
