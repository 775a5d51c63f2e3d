"""Fine-tuning jobs: the create request (``method.type`` ``esft`` or ``supervised``), the job object, events,
checkpoints and the list pages (OpenAI's ``first_id``/``last_id``/``has_more``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import ListPage, StrictRequest
from api.schemas.options import AutoValue, api_options, field_of, model_of

__all__ = [
    "AutoValue", "ESFTParams", "Hyperparameters", "JobCreate", "Method", "Resources", "SupervisedHyperparameters",
]


JobStatus = Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
MethodType = Literal["esft", "supervised"]
# OpenAI's supervised hyperparameters; their meaning is the same as the ESFT options of the same names.
SUPERVISED_OPTIONS = ("n_epochs", "batch_size", "learning_rate_multiplier")
JobPhase = Literal["validating", "scoring", "selecting", "training", "evaluating", "registering"]

# Fields derived from the library's option declarations (esft.config); descriptions, bounds, "auto" from there.
Hyperparameters = model_of(
    "Hyperparameters", "hyperparameters", "Training hyperparameters; auto values are resolved from the dataset."
)
ESFTParams = model_of(
    "ESFTParams", "method", "ESFT method settings (paper sections 3.2-3.3) and training hyperparameters.",
    hyperparameters=(Hyperparameters, Field(default_factory=Hyperparameters)),
)
SupervisedHyperparameters = model_of(
    "SupervisedHyperparameters", "hyperparameters", "OpenAI's supervised hyperparameters (the ESFT options of the "
    "same names); auto values are resolved from the dataset.", only=SUPERVISED_OPTIONS,
)
_SEED_TYPE, _SEED_FIELD = field_of(next(o for o in api_options("job") if o.name == "seed"), default=None)


class SupervisedParams(StrictRequest):
    """``supervised``: the service's default method (ESFT with its default scoring and selection)."""

    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)  # type: ignore


class Method(StrictRequest):
    """``{"type": T, T: {...}}`` as OpenAI's SDK sends it; only the object named by ``type`` may be given."""

    type: MethodType = "esft"
    esft: ESFTParams | None = None  # type: ignore[valid-type]
    supervised: SupervisedParams | None = None


class Resources(StrictRequest):
    """What one job runs on. Several devices: the worker launches one training process per device (torchrun)."""

    gpus: int = Field(
        default=1,
        ge=1,
        le=64,
        description="devices (one node) that train this job, data parallel; at most the service's "
        "`max_gpus_per_job`. On CPU workers: training processes.",
    )


class JobCreate(StrictRequest):
    model: str = Field(description="a registered base model id (GET /v1/models)")
    training_file: str
    validation_file: str | None = None
    method: Method | None = Field(default=None, description="default: `esft` with every option auto")
    hyperparameters: SupervisedHyperparameters | None = Field(  # type: ignore[valid-type]
        default=None, description="OpenAI's older form of `method.supervised.hyperparameters` (not with `method`)"
    )
    seed: _SEED_TYPE | None = _SEED_FIELD  # type: ignore[valid-type]
    suffix: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    integrations: list[dict[str, Any]] | None = Field(
        default=None, description="not supported: a non-empty list is refused with 400"
    )
    resources: Resources | None = Field(default=None, description="default: one device")


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
    resources: Resources = Field(default_factory=Resources)


class JobList(ListPage):
    data: list[JobObject]


class JobEventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: Literal["info", "warn", "error"]
    message: str
    type: Literal["message", "metrics"]
    data: dict[str, Any] | None = None


class JobEventList(ListPage):
    data: list[JobEventObject]


class CheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any] = Field(default_factory=dict)


class CheckpointList(ListPage):
    data: list[CheckpointObject]


class ArtifactObject(BaseModel):
    name: str
    object: Literal["fine_tuning.job.artifact"] = "fine_tuning.job.artifact"
    bytes: int
    content_type: str


class ArtifactList(ListPage):
    """``first_id``/``last_id`` are artifact names (artifacts are named, not numbered)."""

    data: list[ArtifactObject]
