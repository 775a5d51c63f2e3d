"""Fine-tuning jobs for the API: create (check, enqueue), list, get, cancel, pause, resume, and the public view."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core import job_secrets, runs
from api.core.artifacts import adapter_key
from api.core.db.models import BaseModel, Job
from api.core.errors import ServiceError, not_found
from api.core.queue import Queue
from api.core.settings import Settings
from api.core.storage import LocalStorage
from api.schemas.jobs import (
    JobCreate,
    JobError,
    JobObject,
    JobProgress,
    Method,
    Resources,
    SupervisedParams,
    params_model,
)
from api.services import files, job_options
from api.services.common import new_id, page_by_created, unix
from esft.errors import ConfigError
from esft.outbound import check_outbound_url

WAITING = ("validating_files", "queued")


def adapter_name(job: Job) -> str:
    """OpenAI's ``ft:{base}:{org}:{suffix}:{job}`` (org: the project id; suffix empty when none was given)."""
    return f"ft:{job.model}:{job.project_id}:{job.suffix or ''}:{job.id}"


def _refuse(message: str, param: str, code: str = "invalid_request") -> ServiceError:
    return ServiceError(400, message, code=code, param=param)


def job_method(body: JobCreate) -> dict[str, Any]:
    """The stored method: ``{"type": T, T: {...}}`` from ``method`` or OpenAI's older top-level ``hyperparameters``."""
    if body.integrations:
        raise _refuse("integrations are not supported by this service; leave `integrations` out.",
                      "integrations", "integrations_not_supported")
    method = body.method
    if body.hyperparameters is not None:
        if method is not None:
            raise _refuse("Give hyperparameters under `method.<type>.hyperparameters`, or the older top-level "
                          "`hyperparameters` without `method`, not both.", "hyperparameters")
        method = Method(type="supervised", supervised=SupervisedParams(hyperparameters=body.hyperparameters))
    method = method or Method()
    for other in Method.model_fields:
        if other not in ("type", method.type) and getattr(method, other) is not None:
            raise _refuse(f"`method.{other}` does not belong to a {method.type!r} method; set `method.type` to "
                          f"{other!r} or leave it out.", f"method.{other}")
    params = getattr(method, method.type) or params_model(method.type)()
    return {"type": method.type, method.type: job_secrets.split(params)[0]}  # secrets are never stored


def job_resources(body: JobCreate, settings: Settings, method_type: str) -> dict[str, Any]:
    """The stored ``resources``: checked against the devices this deployment's workers declare."""
    resources = body.resources or Resources()
    if resources.gpus > 1 and method_type != "esft":
        raise _refuse(f"multi-device jobs train method 'esft' only for now; run this {method_type!r} job with "
                      "`resources.gpus` 1.", "resources.gpus", "unsupported_value")
    limit = settings.max_gpus_per_job
    if resources.gpus > limit:
        raise _refuse(f"`resources.gpus` is {resources.gpus}, but no worker of this service has more than {limit} "
                      f"device(s) for one job; ask for at most {limit}.", "resources.gpus", "insufficient_devices")
    if resources.ep_size is not None and resources.gpus % resources.ep_size:
        raise _refuse(f"`resources.ep_size` {resources.ep_size} does not divide `resources.gpus` "
                      f"{resources.gpus}; choose a divisor of it (the experts are sharded over ep_size devices).",
                      "resources.ep_size", "invalid_value")
    return resources.model_dump(exclude_none=True)


def _check_inputs(session: Session, project_id: str, body: JobCreate) -> None:
    if session.get(BaseModel, body.model) is None:
        raise ServiceError(
            404,
            f"Model {body.model!r} is not a registered base model (see GET /v1/models).",
            code="model_not_found",
            param="model",
        )
    for param in ("training_file", "validation_file"):
        file_id = getattr(body, param)
        if file_id is not None and files.get(session, project_id, file_id, param=param).purpose != "fine-tune":
            raise ServiceError(
                400,
                f"{param} {file_id} was not uploaded with purpose 'fine-tune'.",
                code="invalid_file_purpose",
                param=param,
            )


def _check_evaluation(settings: Settings, body: JobCreate) -> dict[str, Any] | None:
    """The evaluation spec to store: metrics known (the schema), judge given and allowed, sizes within limits."""
    spec = body.evaluation
    if spec is None:
        return None
    if "llm_judge" in spec.metrics and spec.judge is None:
        raise _refuse("Metric 'llm_judge' needs `evaluation.judge` with the `url` and `model` of an "
                      "OpenAI-compatible endpoint.", "evaluation.judge")
    if spec.judge is not None:
        try:
            check_outbound_url(spec.judge.url, settings.outbound_url_allowlist, param="evaluation.judge.url")
        except ConfigError as exc:
            raise _refuse(exc.message, "evaluation.judge.url", exc.code) from None
    if spec.max_examples is not None and spec.max_examples > settings.max_eval_examples:
        raise _refuse(f"`evaluation.max_examples` is {spec.max_examples}; this deployment evaluates at most "
                      f"{settings.max_eval_examples} examples per job.", "evaluation.max_examples")
    return job_secrets.split(spec, exclude_none=True)[0]  # the judge's api_key is kept out of the row


def _check_general_files(session: Session, project_id: str, body: JobCreate) -> list[dict[str, Any]] | None:
    """General-ability files: the caller's, uploaded for fine-tuning, and valid (as training files must be)."""
    if not body.general_files:
        return None
    for i, general in enumerate(body.general_files):
        param = f"general_files[{i}].file"
        row = files.get(session, project_id, general.file, param=param)
        if row.purpose != "fine-tune":
            raise ServiceError(400, f"{param} {general.file} was not uploaded with purpose 'fine-tune'.",
                               code="invalid_file_purpose", param=param)
        if row.status != "processed":
            detail = files.summary(row.validation) or "it failed validation"
            raise ServiceError(400, f"{param} {general.file} cannot be evaluated on: {detail}",
                               code="invalid_file", param=param)
    return [g.model_dump(mode="json") for g in body.general_files]


def checked_fields(session: Session, settings: Settings, project_id: str, body: JobCreate) -> dict[str, Any]:
    """The stored fields of a request whose model, files and options all pass (else a 4xx ``ServiceError``):
    ``method``, ``resources``, ``evaluation`` and ``general_files``."""
    method = job_method(body)
    resources = job_resources(body, settings, method["type"])
    _check_inputs(session, project_id, body)
    evaluation = _check_evaluation(settings, body)
    general_files = _check_general_files(session, project_id, body)
    job_options.check(job_options.spec_values(method, body.seed), settings, method["type"])
    return {"method": method, "resources": resources, "evaluation": evaluation, "general_files": general_files}


def create(session: Session, queue: Queue, settings: Settings, project_id: str, body: JobCreate) -> Job:
    """Check model, files and options; store the job as ``validating_files`` and enqueue its validation."""
    fields = checked_fields(session, settings, project_id, body)
    method = fields["method"]
    _, sent_secrets = job_secrets.split(body)
    job = Job(
        id=new_id("ftjob"),
        project_id=project_id,
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        method=method,
        hyperparameters=method[method["type"]]["hyperparameters"],
        seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
        suffix=body.suffix,
        metadata_=body.metadata,
        resources=fields["resources"],
        evaluation=fields["evaluation"],
        general_files=fields["general_files"],
        status="validating_files",
        step="validate",
    )
    session.add(job)
    job_secrets.save(settings, job.id, sent_secrets)  # before the first step is dispatched
    runs.add_event(session, job.id, f"Created fine-tuning job {job.id} on {job.model}.")
    session.flush()
    runs.dispatch(session, job, "validate", queue)
    return job


def get(session: Session, project_id: str, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None or job.project_id != project_id:
        raise not_found("fine_tuning_job", job_id, param="fine_tuning_job_id")
    return job


def list_jobs(
    session: Session,
    project_id: str,
    *,
    status: str | None,
    metadata: dict[str, str] | None = None,
    after: str | None,
    limit: int,
):
    """A page of the project's jobs, newest first; ``metadata`` keeps jobs whose metadata has every pair."""
    query = select(Job).where(Job.project_id == project_id)
    if status:
        query = query.where(Job.status == status)
    for key, value in (metadata or {}).items():
        query = query.where(Job.metadata_[key].as_string() == value)
    return page_by_created(session, query, Job, after=after, limit=limit)


def cancel(session: Session, storage: LocalStorage, project_id: str, job_id: str) -> Job:
    """Cancel; an adapter the register step copied meanwhile goes too (its row goes in ``runs.cancel``)."""
    job = get(session, project_id, job_id)
    if not runs.cancel(session, job):
        raise ServiceError(
            409,
            f"Job {job_id} is already {job.status}; only unfinished jobs can be cancelled.",
            code="job_not_cancellable",
            param="fine_tuning_job_id",
        )
    storage.delete(adapter_key(job_id))
    return job


def pause(session: Session, project_id: str, job_id: str) -> Job:
    job = get(session, project_id, job_id)
    if not runs.pause(session, job):
        state = "pausing" if job.stop_reason == "pause" else job.status
        raise ServiceError(
            409,
            f"Job {job_id} is {state}; only queued or running jobs can be paused.",
            code="job_not_pausable",
            param="fine_tuning_job_id",
        )
    return job


def resume(session: Session, queue: Queue, project_id: str, job_id: str) -> Job:
    job = get(session, project_id, job_id)
    if not runs.resume(session, job, queue):
        state = "still pausing" if job.stop_reason == "pause" else job.status
        raise ServiceError(
            409,
            f"Job {job_id} is {state}; only paused jobs can be resumed.",
            code="job_not_resumable",
            param="fine_tuning_job_id",
        )
    return job


def queue_position(session: Session, job: Job) -> int | None:
    """1-based place among waiting jobs (all projects share the devices), or None once the job started."""
    if job.status not in WAITING:
        return None
    ahead = session.scalar(
        select(func.count()).select_from(Job).where(Job.status.in_(WAITING), Job.created_at < job.created_at)
    )
    return int(ahead or 0) + 1


def _estimated_finish(job: Job) -> int | None:
    if job.seconds_remaining is None or job.heartbeat_at is None or job.status != "running":
        return None
    return int(job.heartbeat_at.timestamp() + job.seconds_remaining)


def public_method(job: Job) -> dict[str, Any]:
    """The stored method with its hyperparameters replaced by the resolved values once files are validated."""
    method = dict(job.method)
    kind = method.get("type", "esft")
    params = dict(method.get(kind) or {})
    given = params.get("hyperparameters") or {}
    resolved = job.hyperparameters or {}
    params["hyperparameters"] = {k: resolved.get(k, v) if "total_steps" in resolved else v for k, v in given.items()}
    method[kind] = params
    return method


def to_public(session: Session, job: Job) -> JobObject:
    error = (
        JobError(code=job.error_code, message=job.error_message or "", param=job.error_param)
        if job.error_code
        else None
    )
    progress = (
        JobProgress(fraction=job.progress, seconds_remaining=job.seconds_remaining)
        if job.progress is not None
        else None
    )
    data: dict[str, Any] = dict(
        id=job.id,
        created_at=unix(job.created_at),
        started_at=unix(job.started_at),
        finished_at=unix(job.finished_at),
        estimated_finish=_estimated_finish(job),
        model=job.model,
        fine_tuned_model=job.fine_tuned_model,
        organization_id=job.project_id,
        status=job.status,
        phase=job.phase if job.status in ("running", "validating_files") else None,
        progress=progress,
        queue_position=queue_position(session, job),
        error=error,
        hyperparameters=job.hyperparameters,
        method=public_method(job),
        result_files=job.result_files or [],
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        validation_file=job.validation_file,
        seed=job.seed,
        suffix=job.suffix,
        metadata=job.metadata_,
        resources=Resources(**(job.resources or {})),
        evaluation=job.evaluation,
        general_files=job.general_files,
        evaluation_result=job.evaluation_result,
    )
    return JobObject(**data)
