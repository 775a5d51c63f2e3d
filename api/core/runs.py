"""The job state machine: dispatch, lease/heartbeat, advance, fail, cancel and reaping of stale steps.

The ``jobs`` row is the system of record. A step runs only under the dispatch id it was sent with and only
while its worker holds the row's lease (renewed by heartbeats); every write from a worker is conditional on
holding the lease and on the job not being terminal, so a stale or duplicate copy can never win.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from api.core.db.models import Job, JobEvent
from api.core.queue import STEPS, Queue

TERMINAL = ("succeeded", "failed", "cancelled")
PHASES = {
    "validate": "validating",
    "score": "scoring",
    "select": "selecting",
    "train": "training",
    "evaluate": "evaluating",
    "register": "registering",
}


def now() -> datetime:
    return datetime.now(UTC)


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    type: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(JobEvent(job_id=job_id, message=message, level=level, type=type, data=data))


def next_step(step: str) -> str | None:
    index = STEPS.index(step)
    return STEPS[index + 1] if index + 1 < len(STEPS) else None


def dispatch(session: Session, job: Job, step: str, queue: Queue) -> str:
    """Point the job at ``step`` under a fresh dispatch id; commit, then enqueue (no stale reads)."""
    job.step = step
    job.dispatch_id = uuid.uuid4().hex
    job.dispatched_at = now()
    job.lease_owner = None
    job.lease_expires_at = None
    session.commit()
    queue.send(step, job.id, job.dispatch_id)
    return job.dispatch_id


@dataclass
class Claim:
    ok: bool
    reason: str = ""


def claim(session: Session, job_id: str, step: str, dispatch_id: str, owner: str, ttl_s: float) -> Claim:
    """Take the lease for ``step`` of a job; fails if the dispatch is stale, the job ended or it is held."""
    t = now()
    values: dict[str, Any] = {
        "lease_owner": owner,
        "lease_expires_at": t + timedelta(seconds=ttl_s),
        "heartbeat_at": t,
        "attempts": Job.attempts + 1,
        "phase": PHASES[step],
    }
    if step != "validate":
        values["status"] = "running"
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.step == step, Job.dispatch_id == dispatch_id, Job.status.not_in(TERMINAL))
        .where((Job.lease_owner.is_(None)) | (Job.lease_expires_at < t) | (Job.lease_owner == owner))
        .values(**values)
    )
    if result.rowcount == 1:
        session.execute(
            update(Job).where(Job.id == job_id, Job.started_at.is_(None), Job.status == "running").values(started_at=t)
        )
        session.commit()
        return Claim(True)
    session.rollback()
    job = session.get(Job, job_id)
    if job is None:
        return Claim(False, "job no longer exists")
    if job.status in TERMINAL:
        return Claim(False, f"job is {job.status}")
    if job.step != step or job.dispatch_id != dispatch_id:
        return Claim(False, f"stale dispatch (job is at step {job.step!r})")
    return Claim(False, f"lease held by {job.lease_owner}")


@dataclass
class Beat:
    holds_lease: bool
    cancel: bool


def heartbeat(session: Session, job_id: str, owner: str, ttl_s: float) -> Beat:
    """Renew the lease; report whether it is still ours and whether the job was cancelled."""
    t = now()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner)
        .values(heartbeat_at=t, lease_expires_at=t + timedelta(seconds=ttl_s))
    )
    session.commit()
    row = session.execute(select(Job.cancel_requested, Job.status).where(Job.id == job_id)).one_or_none()
    cancel = row is None or bool(row[0]) or row[1] in TERMINAL
    return Beat(holds_lease=result.rowcount == 1, cancel=cancel)


def update_owned(session: Session, job_id: str, owner: str, **values: Any) -> bool:
    """Write fields of a job only while ``owner`` holds its lease and it is not terminal."""
    values.setdefault("heartbeat_at", now())
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner, Job.status.not_in(TERMINAL)).values(**values)
    )
    session.commit()
    return result.rowcount == 1


def advance(session: Session, job_id: str, owner: str, step: str, queue: Queue, **values: Any) -> str | None:
    """Finish ``step``: apply ``values``, release the lease, dispatch the next step (or succeed)."""
    following = next_step(step)
    if following is None:
        values.update(status="succeeded", finished_at=now(), phase=None, progress=1.0, seconds_remaining=0.0)
    else:
        values.update(step=following, dispatch_id=uuid.uuid4().hex, dispatched_at=now())
        if step == "validate":
            values.update(status="queued", phase=None)
    values.update(lease_owner=None, lease_expires_at=None)
    if not update_owned(session, job_id, owner, **values):
        return None
    if following is not None:
        queue.send(following, job_id, values["dispatch_id"])
    return following


def fail(
    session: Session, job_id: str, owner: str | None, *, code: str, message: str, param: str | None = None
) -> bool:
    """Mark the job failed (unless terminal; with ``owner``, only while it holds the lease)."""
    query = update(Job).where(Job.id == job_id, Job.status.not_in(TERMINAL))
    if owner is not None:
        query = query.where(Job.lease_owner == owner)
    result = session.execute(
        query.values(
            status="failed",
            finished_at=now(),
            error_code=code,
            error_message=message[:4000],
            error_param=param,
            lease_owner=None,
            lease_expires_at=None,
        )
    )
    if result.rowcount == 1:
        add_event(session, job_id, f"Job failed: {message}", level="error")
    session.commit()
    return result.rowcount == 1


def release(session: Session, job_id: str, owner: str) -> None:
    session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == owner).values(lease_owner=None, lease_expires_at=None)
    )
    session.commit()


def cancel(session: Session, job: Job) -> bool:
    """Flag cancellation and end the job; a running step sees the flag at its next heartbeat and stops."""
    if job.status in TERMINAL:
        return False
    job.cancel_requested = True
    job.status = "cancelled"
    job.finished_at = now()
    job.seconds_remaining = None
    add_event(session, job.id, f"Job cancelled (during {job.phase or job.status}).")
    session.commit()
    return True


def reap(session: Session, queue: Queue, *, undelivered_after_s: float) -> list[str]:
    """Re-dispatch steps whose lease expired (worker died) or that nobody picked up for too long."""
    t = now()
    stale = select(Job).where(Job.status.not_in(TERMINAL), Job.lease_owner.is_not(None), Job.lease_expires_at < t)
    lost = select(Job).where(
        Job.status.not_in(TERMINAL),
        Job.lease_owner.is_(None),
        Job.dispatched_at < t - timedelta(seconds=undelivered_after_s),
    )
    redispatched = []
    for job in list(session.scalars(stale)) + list(session.scalars(lost)):
        why = f"worker {job.lease_owner} stopped heartbeating" if job.lease_owner else "step was never picked up"
        add_event(session, job.id, f"Re-enqueued step {job.step!r}: {why}.", level="warn")
        dispatch(session, job, job.step, queue)
        redispatched.append(job.id)
    return redispatched
