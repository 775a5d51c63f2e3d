"""Fine-tuning jobs: the create request (``method.type = "esft"``), the job object, events, checkpoints."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import StrictRequest


class AutoValue(StrEnum):
    """``"auto"``: let the service choose. An enum, not a literal, so generated clients parse ``int | "auto"``."""

    auto = "auto"


Auto = Annotated[AutoValue, Field(strict=False)]
JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]
JobPhase = Literal["validating", "scoring", "selecting", "training", "evaluating", "registering"]


class Hyperparameters(StrictRequest):
    """Training hyperparameters; ``"auto"`` values are resolved from the dataset when the job is validated."""

    n_epochs: int | Auto = Field(default=AutoValue.auto, description="auto: aim for 3 epochs, clamped to 1..25")
    max_steps: int | None = Field(default=None, gt=0, description="overrides n_epochs when set")
    batch_size: int | Auto = Field(default=AutoValue.auto, description="auto: min(8, number of examples)")
    learning_rate: float | Auto = Field(default=AutoValue.auto, description="auto: 1e-5 (the ESFT paper's value)")
    seq_len: int | Auto = Field(default=AutoValue.auto, description="auto: longest example, capped by the context")
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "constant", "linear"] = "cosine"
    weight_decay: float = Field(default=0.0, ge=0)
    grad_accum_steps: int = Field(default=1, gt=0)
    eval_every: int | None = Field(default=None, gt=0)
    save_every: int | None = Field(default=None, gt=0, description="checkpoint every N steps (default: ~10 per run)")


class ESFTParams(StrictRequest):
    """ESFT method settings (paper sections 3.2-3.3)."""

    score_function: Literal["token", "gate"] = "token"
    top_p: float | Auto = Field(default=AutoValue.auto, description="auto: 0.2 for token, 0.1 for gate")
    n_sample_tokens: int | Auto = Field(default=AutoValue.auto, description="tokens scored to pick experts")
    max_experts_per_layer: int | None = Field(default=None, gt=0)
    train_shared_experts: bool = False
    train_non_expert_modules: bool = False
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class Method(StrictRequest):
    type: Literal["esft"] = "esft"
    esft: ESFTParams = Field(default_factory=ESFTParams)


class JobCreate(StrictRequest):
    model: str = Field(description="a registered base model id (GET /v1/models)")
    training_file: str
    validation_file: str | None = None
    method: Method = Field(default_factory=Method)
    seed: int | None = Field(default=None, ge=0, lt=2**31)
    suffix: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    metadata: dict[str, str] | None = Field(default=None, max_length=16)


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class JobProgress(BaseModel):
    fraction: float | None = Field(default=None, description="share of the current training run done, 0..1")
    seconds_remaining: float | None = None


class JobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    started_at: int | None = None
    finished_at: int | None = None
    estimated_finish: int | None = None
    model: str
    fine_tuned_model: str | None = None
    organization_id: str
    status: JobStatus
    phase: JobPhase | None = None
    progress: JobProgress | None = None
    queue_position: int | None = None
    error: JobError | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    method: dict[str, Any] = Field(default_factory=dict)
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    seed: int
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    integrations: list[Any] = Field(default_factory=list)


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobObject]
    has_more: bool = False


class JobEventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class JobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventObject]
    has_more: bool = False


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any] = Field(default_factory=dict)


class CheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointObject]
    has_more: bool = False


class ArtifactObject(BaseModel):
    name: str
    object: Literal["fine_tuning.job.artifact"] = "fine_tuning.job.artifact"
    bytes: int
    content_type: str


class ArtifactList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ArtifactObject]
    has_more: bool = False
