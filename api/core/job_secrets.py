"""Secrets sent with a job (an LLM judge's or a webhook's ``api_key``: fields typed ``SecretStr`` in the job
schema) never reach the jobs row nor any response.

``split`` takes them out of what is stored; ``save`` writes them to ``<data_dir>/secrets/<job_id>.json``
(mode 0600), their only copy; the step that needs one reads it with ``load``; the reaper deletes the file once
the job has finished (``sweep``). A file rather than the database: database rows end up in backups, replicas
and admin SQL sessions, and rows have no per-row permissions; a file next to the artifacts is readable by the
service's user only and is gone when the job is. It survives a worker crash and redelivery, unlike a secret
carried only in the queue message.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pydantic import BaseModel, SecretStr
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.db.models import Job
from api.core.runs import TERMINAL
from api.core.settings import Settings


def _walk(model: BaseModel, prefix: str, found: dict[str, str]) -> dict[str, Any]:
    """Collect ``SecretStr`` values by dotted path; returns pydantic's ``exclude`` for them."""
    exclude: dict[str, Any] = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, SecretStr):
            found[path] = value.get_secret_value()
            exclude[name] = True
        elif isinstance(value, BaseModel) and (inner := _walk(value, f"{path}.", found)):
            exclude[name] = inner
    return exclude


def split(model: BaseModel, *, exclude_none: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """(the model as JSON without its secret fields, the secrets by dotted path such as ``judge.api_key``)."""
    found: dict[str, str] = {}
    exclude = _walk(model, "", found)
    return model.model_dump(mode="json", exclude=exclude or None, exclude_none=exclude_none), found


def _path(settings: Settings, job_id: str):
    return settings.storage_dir / "secrets" / f"{job_id}.json"


def save(settings: Settings, job_id: str, secrets: dict[str, str]) -> None:
    if not secrets:
        return
    path = _path(settings, job_id)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(secrets, f)


def load(settings: Settings, job_id: str) -> dict[str, str]:
    """The job's secrets by dotted path (empty when it was sent none)."""
    path = _path(settings, job_id)
    return json.loads(path.read_text()) if path.is_file() else {}


def sweep(settings: Settings, session: Session) -> list[str]:
    """Delete the secrets of finished (or deleted) jobs; returns their job ids."""
    folder = settings.storage_dir / "secrets"
    if not folder.is_dir():
        return []
    held = {path.stem: path for path in folder.glob("*.json")}
    if not held:
        return []
    live = set(session.scalars(select(Job.id).where(Job.id.in_(held), Job.status.not_in(TERMINAL))))
    gone = sorted(set(held) - live)
    for job_id in gone:
        held[job_id].unlink(missing_ok=True)
    return gone
