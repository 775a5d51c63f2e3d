"""Job outputs: checkpoints recorded by the worker, and the downloadable artifacts of a job's work folder.

Only names in ``CONTENT_TYPES`` (``api.core.artifacts``) can be downloaded, so a request never names another path.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.artifacts import CONTENT_TYPES, job_key
from api.core.db.models import Checkpoint, Job
from api.core.errors import not_found
from api.core.storage import LocalStorage
from api.schemas.jobs import ArtifactObject, CheckpointObject
from api.services.common import unix


def artifact_path(storage: LocalStorage, job_id: str, name: str) -> Path:
    return storage.path(f"{job_key(job_id)}/{name}")


def list_artifacts(storage: LocalStorage, job: Job) -> list[ArtifactObject]:
    found = []
    for name, content_type in CONTENT_TYPES.items():
        path = artifact_path(storage, job.id, name)
        if path.is_file():
            found.append(ArtifactObject(name=name, bytes=path.stat().st_size, content_type=content_type))
    return found


def get_artifact(storage: LocalStorage, job: Job, name: str) -> tuple[Path, str]:
    if name not in CONTENT_TYPES:
        raise not_found("artifact", name, param="name")
    path = artifact_path(storage, job.id, name)
    if not path.is_file():
        raise not_found("artifact", name, param="name")
    return path, CONTENT_TYPES[name]


def list_checkpoints(session: Session, job: Job, *, after: str | None, limit: int):
    query = select(Checkpoint).where(Checkpoint.job_id == job.id).order_by(Checkpoint.step_number.desc())
    if after:
        cursor = session.get(Checkpoint, after)
        if cursor is None or cursor.job_id != job.id:
            return [], False
        query = query.where(Checkpoint.step_number < cursor.step_number)
    rows = list(session.scalars(query.limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def checkpoint_public(row: Checkpoint, model_name: str) -> CheckpointObject:
    return CheckpointObject(
        id=row.id,
        created_at=unix(row.created_at),
        fine_tuning_job_id=row.job_id,
        step_number=row.step_number,
        fine_tuned_model_checkpoint=f"{model_name}:ckpt-step-{row.step_number}",
        metrics=row.metrics or {},
    )
