"""The job state machine: dispatch, lease/heartbeat, advance, fail, stop requests and reaping of stale steps.

The ``jobs`` row is the system of record. A step runs only under the dispatch id it was sent with and only
while its worker holds the row's lease (renewed by heartbeats); every write from a worker is conditional on
holding the lease and on the job not being terminal, so a stale or duplicate copy can never win. Each
acquisition increments ``jobs.lease_generation``: the fencing token a worker carries into the writes that are
not on the jobs row (checkpoints, metrics events, the adapter row; ``fenced``), so a stalled worker whose lease
was taken over can never write beside its replacement.

Transitions the API makes (cancel, pause, resume) are compare-and-set UPDATEs on the status the caller saw, so
a cancel can never overwrite a job that has just succeeded.

Cancel, pause and a worker's graceful shutdown are one mechanism: a stop request with a reason
(``jobs.stop_reason``) that the running step sees at its next heartbeat; training then saves a checkpoint and
stops, and ``stopped`` settles the job by reason (cancelled, paused, or released for the next worker's reaper
to re-enqueue: a worker that is shutting down must not be handed its own step again). A paused job
holds no device and is never reaped; ``resume`` dispatches its step again, and training continues from the
checkpoint.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from api.core.db.models import Adapter, Job, JobEvent
from api.core.queue import STEPS, Queue

TERMINAL = ("succeeded", "failed", "cancelled")
INACTIVE = (*TERMINAL, "paused")  # no step may run
STOP_REASONS = ("cancel", "pause", "shutdown")
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
    job.stop_reason = None
    session.commit()
    queue.send(step, job.id, job.dispatch_id)
    return job.dispatch_id


@dataclass
class Claim:
    ok: bool
    reason: str = ""
    token: int | None = None  # the lease generation (fencing token) this claim holds


def claim(session: Session, job_id: str, step: str, dispatch_id: str, owner: str, ttl_s: float) -> Claim:
    """Take the lease for ``step`` of a job; fails if the dispatch is stale, the job ended or it is held."""
    t = now()
    values: dict[str, Any] = {
        "lease_owner": owner,
        "lease_expires_at": t + timedelta(seconds=ttl_s),
        "heartbeat_at": t,
        "attempts": Job.attempts + 1,
        "lease_generation": Job.lease_generation + 1,
        "phase": PHASES[step],
    }
    if step != "validate":
        values["status"] = "running"
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.step == step, Job.dispatch_id == dispatch_id, Job.status.not_in(INACTIVE))
        .where(Job.stop_reason.is_(None))
        .where((Job.lease_owner.is_(None)) | (Job.lease_expires_at < t) | (Job.lease_owner == owner))
        .values(**values)
    )
    if result.rowcount == 1:
        session.execute(
            update(Job).where(Job.id == job_id, Job.started_at.is_(None), Job.status == "running").values(started_at=t)
        )
        token = session.scalar(select(Job.lease_generation).where(Job.id == job_id))
        session.commit()
        return Claim(True, token=token)
    session.rollback()
    job = session.get(Job, job_id)
    if job is None:
        return Claim(False, "job no longer exists")
    if job.status in INACTIVE:
        return Claim(False, f"job is {job.status}")
    if job.stop_reason:
        return Claim(False, f"stop requested ({job.stop_reason})")
    if job.step != step or job.dispatch_id != dispatch_id:
        return Claim(False, f"stale dispatch (job is at step {job.step!r})")
    return Claim(False, f"lease held by {job.lease_owner}")


@dataclass
class Beat:
    holds_lease: bool
    stop_reason: str | None  # cancel, pause or shutdown: stop at the next checkpoint


def heartbeat(session: Session, job_id: str, owner: str, ttl_s: float) -> Beat:
    """Renew the lease; report whether it is still ours and whether a stop was requested."""
    t = now()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner)
        .values(heartbeat_at=t, lease_expires_at=t + timedelta(seconds=ttl_s))
    )
    session.commit()
    row = session.execute(select(Job.stop_reason, Job.status).where(Job.id == job_id)).one_or_none()
    reason = "cancel" if row is None or row[1] in TERMINAL else row[0]
    return Beat(holds_lease=result.rowcount == 1, stop_reason=reason)


def fenced(session: Session, job_id: str, token: int, *, ended_ok: bool = False, **values: Any) -> bool:
    """Lock the job row for the rest of ``session``'s transaction if ``token`` is still its lease generation.

    Call it first in the transaction that writes a checkpoint row, metrics event or adapter row and write only
    when it returns True: the row lock (PostgreSQL) or write lock (SQLite) holds until commit, so a claim by a
    replacement, or a cancel, is ordered entirely before or after the write. ``values`` are set on the job too.
    ``ended_ok``: the token alone decides, also once the job ended (the checkpoint a cancelled step saves as it
    stops is still recorded; an adapter never is).
    """
    query = update(Job).where(Job.id == job_id, Job.lease_generation == token)
    if not ended_ok:
        query = query.where(Job.status.not_in(TERMINAL))
    result = session.execute(query.values(heartbeat_at=now(), **values))
    return result.rowcount == 1


def holds_token(session: Session, job_id: str, token: int) -> bool:
    """A read-only check of the fencing token (before work that cannot share a transaction, like files)."""
    row = session.execute(select(Job.lease_generation, Job.status).where(Job.id == job_id)).one_or_none()
    return row is not None and row[0] == token and row[1] not in TERMINAL


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
    if following is not None and not _settle_pause(session, job_id):
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


def _transition(session: Session, job: Job, *conditions: Any, **values: Any) -> bool:
    """Compare-and-set: apply ``values`` only if the row still matches ``conditions``; refresh ``job`` either way."""
    result = session.execute(
        update(Job).where(Job.id == job.id, *conditions).values(**values).execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        session.rollback()
        session.refresh(job)
        return False
    return True


def cancel(session: Session, job: Job) -> bool:
    """End the job now (also a paused one); a running step sees the stop request at its next heartbeat.

    The adapter row of a job that is cancelled while registering goes in the same transaction: the register
    step writes it under the job's row lock (``fenced``), so it is either refused or already visible here.
    """
    phase = job.phase or job.status
    if not _transition(
        session, job, Job.status.not_in(TERMINAL),
        stop_reason="cancel", status="cancelled", finished_at=now(), seconds_remaining=None,
    ):
        return False
    session.execute(delete(Adapter).where(Adapter.job_id == job.id))
    add_event(session, job.id, f"Job cancelled (during {phase}).")
    session.commit()
    session.refresh(job)
    return True


def pause(session: Session, job: Job) -> bool:
    """Ask the job to pause: at once when no step runs, else at the running step's next checkpoint."""
    if job.status in INACTIVE or job.stop_reason:
        return False
    active = (Job.status.not_in(INACTIVE), Job.stop_reason.is_(None))
    if _transition(session, job, *active, Job.lease_owner.is_(None),
                   stop_reason="pause", status="paused", seconds_remaining=None):
        add_event(session, job.id, "Job paused.")
    elif _transition(session, job, *active, Job.lease_owner.is_not(None), stop_reason="pause"):
        add_event(session, job.id, f"Pause requested; stopping {job.phase or 'the step'} at a checkpoint.")
    else:
        return False
    session.commit()
    session.refresh(job)
    return True


def resume(session: Session, job: Job, queue: Queue) -> bool:
    """Dispatch a paused job's step again; training continues from its latest checkpoint."""
    status = "validating_files" if job.step == "validate" else "queued"
    if job.status != "paused" or not _transition(session, job, Job.status == "paused", status=status):
        return False
    session.refresh(job)
    add_event(session, job.id, f"Job resumed at step {job.step!r}.")
    dispatch(session, job, job.step, queue)  # clears the stop request
    return True


def request_shutdown(session: Session, owner_prefix: str) -> list[str]:
    """A worker shutting down asks its running steps to checkpoint and stop; the next reaper pass of another
    (or the restarted) worker re-enqueues them."""
    query = select(Job.id).where(
        Job.lease_owner.like(f"{owner_prefix}%"), Job.stop_reason.is_(None), Job.status.not_in(INACTIVE)
    )
    ids = list(session.scalars(query))
    if ids:
        session.execute(update(Job).where(Job.id.in_(ids), Job.stop_reason.is_(None)).values(stop_reason="shutdown"))
    session.commit()
    return ids


def _settle_pause(session: Session, job_id: str) -> bool:
    """Turn a requested pause of a job no step runs into ``paused``; False if none was requested."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.stop_reason == "pause", Job.status.not_in(INACTIVE))
        .values(status="paused", lease_owner=None, lease_expires_at=None, seconds_remaining=None)
    )
    if result.rowcount == 1:
        phase = session.scalar(select(Job.phase).where(Job.id == job_id))
        add_event(session, job_id, f"Paused during {phase or 'the job'}; the device is released.")
    session.commit()
    return result.rowcount == 1


def stopped(session: Session, job_id: str, owner: str, step: str) -> str:
    """Settle a step that stopped on request, by reason: ``cancelled``, ``paused`` or ``released``.

    A step stopped by its worker's shutdown keeps ``stop_reason="shutdown"`` without a lease: no copy may
    claim it until a reaper (of another or the restarted worker) re-enqueues it, at its next pass.
    """
    reason = session.scalar(select(Job.stop_reason).where(Job.id == job_id, Job.lease_owner == owner))
    if reason == "pause" and _settle_pause(session, job_id):
        return "paused"
    if reason == "shutdown":
        add_event(session, job_id, f"Worker shutting down: stopped during {PHASES[step]}; the next worker continues.")
        release(session, job_id, owner)
        return "released"
    add_event(session, job_id, f"Stopped during {PHASES[step]}; the device is released.")
    release(session, job_id, owner)
    return "cancelled"


def reap(session: Session, queue: Queue, *, undelivered_after_s: float) -> list[str]:
    """Re-dispatch steps whose lease expired (worker died) or that nobody picked up for too long.

    Paused jobs are never reaped; a job whose worker died while pausing becomes ``paused``; a step its worker
    released when shutting down is re-enqueued at once. A step still waiting in a long queue is sent again under
    the SAME dispatch id, oldest first: its original message keeps its place (whichever copy arrives first runs,
    the other is skipped), so a busy queue never sends its oldest jobs to the back.
    """
    t = now()
    released = select(Job).where(
        Job.status.not_in(INACTIVE), Job.lease_owner.is_(None), Job.stop_reason == "shutdown"
    )
    stale = select(Job).where(Job.status.not_in(INACTIVE), Job.lease_owner.is_not(None), Job.lease_expires_at < t)
    lost = select(Job).where(
        Job.status.not_in(INACTIVE),
        Job.lease_owner.is_(None),
        Job.dispatched_at < t - timedelta(seconds=undelivered_after_s),
    )
    redispatched = []
    jobs = {job.id: job for query in (stale, released, lost) for job in session.scalars(query)}
    for job in sorted(jobs.values(), key=lambda j: (j.dispatched_at or j.created_at, j.created_at)):
        if job.stop_reason == "pause" and _settle_pause(session, job.id):
            continue
        if job.lease_owner is None and job.stop_reason is None:
            _resend(session, job, queue)
        else:
            why = f"worker {job.lease_owner} stopped heartbeating" if job.lease_owner else "its worker shut down"
            add_event(session, job.id, f"Re-enqueued step {job.step!r}: {why}.", level="warn")
            dispatch(session, job, job.step, queue)
        redispatched.append(job.id)
    return redispatched


def _resend(session: Session, job: Job, queue: Queue) -> None:
    """Send a waiting step's message again under its current dispatch id (in case the broker lost it)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.dispatch_id == job.dispatch_id, Job.lease_owner.is_(None))
        .values(dispatched_at=now())
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        add_event(session, job.id, f"Sent step {job.step!r} again: not picked up yet; it keeps its place.")
    session.commit()
    if result.rowcount == 1:
        queue.send(job.step, job.id, job.dispatch_id)
