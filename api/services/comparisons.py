"""Method comparisons: one ordinary job per method (same files, same budget), then a report once all have ended.

Nothing here trains or evaluates: the jobs run the usual pipeline, and the report is assembled from their
artifacts (``eval_results.json``, ``train_report.json``) and registry rows by ``esft.comparison``, the first
time the comparison is read after its last job ended. The report is generic over the task metrics and
retention numbers the jobs' evaluation writes.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core import runs
from api.core.artifacts import EVAL_RESULTS, TRAIN_REPORT, job_key
from api.core.db.models import Adapter, Comparison, Job
from api.core.errors import ServiceError, not_found
from api.core.queue import Queue
from api.core.settings import Settings
from api.core.storage import LocalStorage
from api.schemas.comparisons import ComparisonCreate, ComparisonJob, ComparisonObject
from api.schemas.jobs import JobCreate, Method, params_model
from api.services import jobs
from api.services.common import new_id, page_by_created, unix
from esft import comparison

REPORT_FILES = {"report.json": comparison.REPORT_JSON, "report.md": comparison.REPORT_MD,
                "report.png": comparison.REPORT_PNG}


def comparison_key(comparison_id: str) -> str:
    return f"comparisons/{comparison_id}"


def _job_request(body: ComparisonCreate, method: str, comparison_id: str, seed: int) -> JobCreate:
    params = params_model(method)(hyperparameters=body.hyperparameters)
    return JobCreate(model=body.model, training_file=body.training_file, validation_file=body.validation_file,
                     method=Method(type=method, **{method: params}), seed=seed, suffix=method.replace("_", "-"),
                     metadata={**(body.metadata or {}), "comparison": comparison_id})


def create(session: Session, queue: Queue, settings: Settings, project_id: str, body: ComparisonCreate) -> Comparison:
    """Check every job first (nothing is stored when one is refused), then store and start them all."""
    if len(set(body.methods)) != len(body.methods):
        raise ServiceError(400, f"`methods` lists a method twice: {body.methods}; give each once.",
                           code="invalid_request", param="methods")
    if "supervised" in body.methods:
        raise ServiceError(400, "`supervised` is ESFT with its defaults; compare `esft` instead.",
                           code="invalid_request", param="methods")
    row = Comparison(id=new_id("ftcmp"), project_id=project_id, model=body.model, methods=list(body.methods))
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    requests = [_job_request(body, m, row.id, seed) for m in body.methods]
    for request in requests:
        jobs.checked_fields(session, settings, project_id, request)
    session.add(row)
    row.job_ids = [jobs.create(session, queue, settings, project_id, request).id for request in requests]
    session.commit()
    return row


def get(session: Session, storage: LocalStorage, project_id: str, comparison_id: str) -> Comparison:
    """The comparison; its report is written the first time it is read after every job ended."""
    row = session.get(Comparison, comparison_id)
    if row is None or row.project_id != project_id:
        raise not_found("comparison", comparison_id, param="comparison_id")
    if row.report is None:
        members = _jobs(session, row)
        if all(job.status in runs.TERMINAL for job in members):
            row.report = _write_report(session, storage, row, members)
            session.commit()
    return row


def list_comparisons(session: Session, project_id: str, *, after: str | None, limit: int):
    query = select(Comparison).where(Comparison.project_id == project_id)
    return page_by_created(session, query, Comparison, after=after, limit=limit)


def report_file(session: Session, storage: LocalStorage, project_id: str, comparison_id: str, name: str) -> Path:
    """``report.json``, ``report.md`` or ``report.png`` of a finished comparison."""
    row = get(session, storage, project_id, comparison_id)
    path = storage.path(f"{comparison_key(row.id)}/{REPORT_FILES.get(name, '')}")
    if name not in REPORT_FILES or not path.is_file():
        raise ServiceError(404, f"Comparison {comparison_id} has no {name!r} (yet): the report is written when every "
                           f"job has ended; files: {sorted(REPORT_FILES)}.", code="not_found", param="name")
    return path


def _jobs(session: Session, row: Comparison) -> list[Job]:
    found = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(row.job_ids)))}
    return [found[job_id] for job_id in row.job_ids if job_id in found]


def _read(storage: LocalStorage, job: Job, name: str) -> dict[str, Any]:
    path = storage.path(f"{job_key(job.id)}/{name}")
    return json.loads(path.read_text()) if path.is_file() else {}


def _evaluation(results: dict[str, Any], side: str) -> dict[str, float]:
    """Task metrics (0-100) of one side (``adapter`` or ``base``) from the evaluate step's ``eval_results.json``:
    each metric's mean (``summary``), and exact match from the always-reported accuracy when not chosen."""
    metrics = {name: value["mean"] for name, value in (results.get("summary") or {}).get(side, {}).items()
               if isinstance(value, dict) and value.get("mean") is not None}
    if "exact_match" not in metrics and f"accuracy_{side}" in results:
        metrics["exact_match"] = 100 * results[f"accuracy_{side}"]
    return metrics


def _retention(results: dict[str, Any]) -> dict[str, float]:
    """Average retention on the general-ability files (ratio adapter/base, difference), when the job had any."""
    average = ((results.get("result") or {}).get("retention") or {}).get("average") or {}
    return {k: v for k, v in average.items() if k in ("ratio", "difference") and v is not None}


def _result(session: Session, storage: LocalStorage, job: Job) -> dict[str, Any]:
    """One method's row: values only for a job that succeeded (a failed one shows blanks and its error)."""
    result: dict[str, Any] = {"method": job.method.get("type"), "job": job.id, "status": job.status}
    if job.status != "succeeded":
        return {**result, "error": job.error_message}
    evaluation, report = _read(storage, job, EVAL_RESULTS), _read(storage, job, TRAIN_REPORT)
    adapter = session.scalar(select(Adapter).where(Adapter.job_id == job.id))
    weights = sum(e["bytes"] for n, e in (adapter.manifest if adapter else {}).items() if n.endswith(".safetensors"))
    return {**result, "task": _evaluation(evaluation, "adapter"), "retention": _retention(evaluation),
            "adapter_bytes": weights, "optimizer_state_bytes": report.get("optimizer_state_bytes"),
            "train_seconds": report.get("train_seconds")}


def _write_report(session: Session, storage: LocalStorage, row: Comparison, members: list[Job]) -> dict[str, Any]:
    results = [_result(session, storage, job) for job in members]
    done = next((job for job in members if job.status == "succeeded"), None)
    base = {"task": _evaluation(_read(storage, done, EVAL_RESULTS), "base")} if done else None
    out = storage.path(comparison_key(row.id))
    return comparison.write_report(results, out, comparison=row.id, model=row.model, base=base,
                                   hyperparameters=members[0].hyperparameters if members else {})


def to_public(session: Session, row: Comparison) -> ComparisonObject:
    members = _jobs(session, row)
    if row.report is None:
        status = "running"
    else:
        status = "succeeded" if any(job.status == "succeeded" for job in members) else "failed"
    return ComparisonObject(
        id=row.id, created_at=unix(row.created_at), model=row.model, status=status, methods=row.methods,
        jobs=[ComparisonJob(id=j.id, method=j.method.get("type"), status=j.status,
                            fine_tuned_model=j.fine_tuned_model) for j in members],
        report=row.report,
    )
