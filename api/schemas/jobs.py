"""Fine-tuning jobs: the create request (``method.type``: ``esft``, ``supervised`` or another registered method),
the job object, events, checkpoints and the list pages (OpenAI's ``first_id``/``last_id``/``has_more``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr

from api.schemas.common import ListPage, StrictRequest
from api.schemas.models import SuiteMetric
from api.schemas.options import AutoValue, api_options, field_of, method_classes, model_of
from esft.evaluation.metrics import METRIC_NAMES

MetricName = Literal[METRIC_NAMES]  # type: ignore[valid-type]
MAX_EVAL_NEW_TOKENS = 4096

__all__ = [
    "AutoValue", "ESFTParams", "Hyperparameters", "JobCreate", "Method", "Resources", "SupervisedHyperparameters",
    "params_model",
]


JobStatus = Literal["validating_files", "queued", "running", "paused", "succeeded", "failed", "cancelled"]
MethodType = Literal["esft", "supervised", "esft_lora", "fft", "lora", "lora_experts"]
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


ESFTLoRAParams = model_of(
    "ESFTLoRAParams", "method", "ESFT-LoRA: ESFT's scoring and selection, then a low-rank delta of the given rank on "
    "each selected expert only (every other weight frozen); and training hyperparameters.",
    classes=method_classes("esft_lora"), hyperparameters=(Hyperparameters, Field(default_factory=Hyperparameters)),
)
FFTParams = model_of(
    "FFTParams", "method", "Full fine-tuning: every parameter trains; the result is registered as a full copy of the "
    "model (its bytes count in the project's storage); and training hyperparameters.",
    classes=method_classes("fft"), hyperparameters=(Hyperparameters, Field(default_factory=Hyperparameters)),
)
LoRAParams = model_of(
    "LoRAParams", "method", "LoRA (peft): `lora` on the attention projections, `lora_experts` on every routed "
    "expert's fused parameters; the result is registered merged, as a full copy of the model; and training "
    "hyperparameters.",
    classes=method_classes("lora"), hyperparameters=(Hyperparameters, Field(default_factory=Hyperparameters)),
)


class SupervisedParams(StrictRequest):
    """``supervised``: the service's default method (ESFT with its default scoring and selection)."""

    hyperparameters: SupervisedHyperparameters = Field(default_factory=SupervisedHyperparameters)  # type: ignore


class Method(StrictRequest):
    """``{"type": T, T: {...}}`` as OpenAI's SDK sends it; only the object named by ``type`` may be given."""

    type: MethodType = "esft"
    esft: ESFTParams | None = None  # type: ignore[valid-type]
    supervised: SupervisedParams | None = None
    esft_lora: ESFTLoRAParams | None = None  # type: ignore[valid-type]
    fft: FFTParams | None = None  # type: ignore[valid-type]
    lora: LoRAParams | None = None  # type: ignore[valid-type]
    lora_experts: LoRAParams | None = None  # type: ignore[valid-type]


def params_model(method_type: str) -> type[StrictRequest]:
    """The request model of ``method.<method_type>`` (its defaults are the method's defaults)."""
    return Method.model_fields[method_type].annotation.__args__[0]  # type: ignore[union-attr]


class Resources(StrictRequest):
    """What one job runs on. Several devices: the worker launches one training process per device (torchrun)."""

    gpus: int = Field(
        default=1,
        ge=1,
        le=64,
        description="devices (one node) that train this job; at most the service's `max_gpus_per_job`. On CPU "
        "workers: training processes.",
    )
    ep_size: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="expert parallelism over the devices: every layer's routed experts sharded over `ep_size` "
        "devices (dense weights by FSDP2), for models that do not fit one device; must divide `gpus` and the "
        "model's expert count. Default: data parallel (every device holds the whole model).",
    )


class JudgeSpec(StrictRequest):
    """An OpenAI-compatible endpoint whose model grades answers 1-10 (docs/llm-judge.md)."""

    url: str = Field(min_length=1, max_length=2048, description="API base, e.g. `http://judge:8000/v1`; must be in "
                     "the deployment's outbound-URL allowlist")
    model: str = Field(min_length=1, max_length=256, description="the judge's model name at that endpoint")
    api_key: SecretStr | None = Field(
        default=None, max_length=4096, description="bearer token for this endpoint; never stored in the job nor "
        "shown back (default: the deployment's ESFT_JUDGE_API_KEY)"
    )


class EvaluationSpec(StrictRequest):
    """How the job scores base model and adapter on the validation file (else the training file)."""

    metrics: list[MetricName] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["exact_match"], min_length=1, max_length=len(METRIC_NAMES),
        description="exact_match, exact_match_strict, contains, bleu, chrf, rouge_l (0-100) and llm_judge (1-10, "
                    "needs `judge`)",
    )
    max_examples: int | None = Field(default=None, ge=1, description="examples evaluated (default: the "
                                     "deployment's `eval_max_examples`; at most its `max_eval_examples`)")
    max_new_tokens: int | None = Field(default=None, ge=1, le=MAX_EVAL_NEW_TOKENS,
                                       description="longest generated answer (default: `eval_max_new_tokens`)")
    judge: JudgeSpec | None = None


class GeneralFile(StrictRequest):
    """A general-ability file of the job (an uploaded `fine-tune` file) and how to score it."""

    file: str = Field(description="file id")
    metric: SuiteMetric = Field(default="exact_match", description="how answers are scored (0-100)")  # type: ignore


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
    evaluation: EvaluationSpec | None = Field(default=None, description="default: exact match")
    general_files: list[GeneralFile] | None = Field(
        default=None, max_length=16, description="general-ability files, evaluated with the base model's suite "
        "for retention (what the adapter kept)"
    )


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
    evaluation: dict[str, Any] | None = Field(default=None, description="the evaluation spec as given")
    general_files: list[dict[str, Any]] | None = None
    evaluation_result: dict[str, Any] | None = Field(
        default=None, description="after evaluation: `headline`, `task` (per-model means with 95% intervals, "
        "adapter minus base) and `retention` (per general file and on average: base, adapter, difference, ratio)"
    )


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
