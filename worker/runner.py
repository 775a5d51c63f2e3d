"""Runs one pipeline step for a job: claim the lease, heartbeat, call the step, record the outcome.

Outcomes: the next step is dispatched; the job fails with a user-facing error; or the step stops on request
(cancelled, paused, or released because its worker is shutting down: ``runs.stopped``), or because the
lease was lost (another worker owns the job now, so nothing is written). The lease's generation (the
fencing token ``runs.claim`` returns) goes with every write the step makes outside the jobs row.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from api.core import runs
from api.core.artifacts import job_key
from api.core.db.models import BaseModel, File, Job
from api.core.db.session import session_scope
from api.core.queue import Queue
from api.core.settings import Settings
from api.core.storage import LocalStorage
from esft.errors import ESFTError, TrainingCancelled
from worker.evaluation import general_files
from worker.library import get_library
from worker.progress import Cancelled, Heartbeat, LeaseLost, ProgressReporter
from worker.steps import STEP_FUNCTIONS, StepContext, StepFailed

log = logging.getLogger(__name__)


class TransientError(Exception):
    """A failure worth retrying (the database was unavailable); the lease was released first."""


def owner_prefix(worker_pid: int) -> str:
    """Lease owners of the steps a Celery worker (main process ``worker_pid``) runs in its pool children."""
    return f"{socket.gethostname()}:{worker_pid}:"


def new_owner() -> str:
    return f"{owner_prefix(os.getppid())}{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _file_path(session, storage: LocalStorage, job: Job, param: str) -> Path | None:
    file_id = getattr(job, param)
    if file_id is None:
        return None
    row = session.get(File, file_id)
    if row is None or not storage.exists(row.storage_key):
        raise StepFailed("file_not_found", f"The {param} {file_id} was deleted.", param=param)
    return storage.path(row.storage_key)


def _event_logger(url: str, job_id: str, token: int):
    def log_event(message: str, *, level: str = "info", type: str = "message", data: dict | None = None) -> None:
        with session_scope(url) as session:
            if runs.fenced(session, job_id, token):
                runs.add_event(session, job_id, message, level=level, type=type, data=data)

    return log_event


def build_context(settings: Settings, job_id: str, owner: str, heartbeat: Heartbeat) -> StepContext:
    storage = LocalStorage(settings.storage_dir)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        base = session.get(BaseModel, job.model)
        training = _file_path(session, storage, job, "training_file")
        validation = _file_path(session, storage, job, "validation_file")
        general = general_files(session, storage, job, base.general_suite if base is not None else None)
        session.expunge(job)
    if base is None or not Path(base.path).is_dir():
        raise StepFailed("model_not_found", f"The base model {job.model!r} is no longer available.", param="model")
    work = storage.path(job_key(job.id))
    work.mkdir(parents=True, exist_ok=True)
    reporter = ProgressReporter(settings.database_url, job_id, owner, heartbeat, throttle_s=settings.event_throttle_s)
    return StepContext(
        job=job,
        settings=settings,
        storage=storage,
        lib=get_library(),
        work=work,
        model_dir=Path(base.path),
        training_path=training,
        validation_path=validation,
        reporter=reporter,
        should_stop=heartbeat.fenced_should_stop,
        log=_event_logger(settings.database_url, job_id, heartbeat.token),
        token=heartbeat.token,
        general_files=general,
    )


def _stopped(settings: Settings, job_id: str, owner: str, step: str, heartbeat: Heartbeat) -> str:
    if heartbeat.lease_lost.is_set():
        log.warning("job %s: lease lost during %s; another worker owns it now", job_id, step)
        return "lease_lost"
    with session_scope(settings.database_url) as session:
        return runs.stopped(session, job_id, owner, step)


def _fail(settings: Settings, job_id: str, owner: str, code: str, message: str, param: str | None) -> str:
    with session_scope(settings.database_url) as session:
        runs.fail(session, job_id, owner, code=code, message=message, param=param)
    return "failed"


def _execute(settings: Settings, step: str, job_id: str, owner: str, heartbeat: Heartbeat) -> dict[str, Any] | str:
    try:
        return STEP_FUNCTIONS[step](build_context(settings, job_id, owner, heartbeat))
    except LeaseLost:
        log.warning("job %s: fencing token %s is stale during %s; writing nothing", job_id, heartbeat.token, step)
        return "lease_lost"
    except (Cancelled, TrainingCancelled):
        return _stopped(settings, job_id, owner, step, heartbeat)
    except ESFTError as exc:  # StepFailed, library errors and ServiceErrors alike: code, message, param
        return _fail(settings, job_id, owner, exc.code, exc.message, exc.param)
    except OperationalError as exc:
        with session_scope(settings.database_url) as session:
            runs.release(session, job_id, owner)
        raise TransientError(str(exc)) from exc
    except Exception as exc:
        log.exception("job %s: step %s crashed", job_id, step)
        message = f"Internal error during {runs.PHASES[step]} ({type(exc).__name__}); see the worker log."
        return _fail(settings, job_id, owner, "internal_error", message, None)


def run_step(
    step: str,
    job_id: str,
    dispatch_id: str,
    *,
    settings: Settings,
    queue: Queue,
    owner: str | None = None,
) -> str:
    """Run ``step`` of a job if this dispatch is current and the lease is free; returns the outcome."""
    owner = owner or new_owner()
    with session_scope(settings.database_url) as session:
        claim = runs.claim(session, job_id, step, dispatch_id, owner, settings.lease_ttl_s)
    if not claim.ok:
        log.info("job %s: skipping %s: %s", job_id, step, claim.reason)
        return f"skipped: {claim.reason}"
    with Heartbeat(
        settings.database_url,
        job_id,
        owner,
        ttl_s=settings.lease_ttl_s,
        interval_s=settings.heartbeat_interval_s,
        token=claim.token,
    ) as heartbeat:
        outcome = _execute(settings, step, job_id, owner, heartbeat)
    if isinstance(outcome, str):
        return outcome
    if heartbeat.should_stop():
        return _stopped(settings, job_id, owner, step, heartbeat)
    with session_scope(settings.database_url) as session:
        following = runs.advance(session, job_id, owner, step, queue, **outcome)
    return f"done -> {following or 'succeeded'}"
