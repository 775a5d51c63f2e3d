"""Job events: pages newest first (cursor ``after`` gives older ones, as OpenAI's) and an SSE tail oldest first.

Event ids are opaque (``JobEvent.public_id``); a cursor is looked up, never parsed. A cursor that is not an
event of the job gives an empty page, as an unknown ``after`` does everywhere in this API; the stream
resumes after ``Last-Event-ID`` (or ``after``) and refuses an unknown one with 400.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.db.models import Job, JobEvent
from api.core.errors import ServiceError
from api.core.runs import TERMINAL
from api.schemas.jobs import JobEventObject
from api.services.common import unix


def to_public(event: JobEvent) -> JobEventObject:
    return JobEventObject(
        id=event.public_id,
        created_at=unix(event.created_at),
        level=event.level,
        message=event.message,
        type=event.type,
        data=event.data,
    )


def _row_id(session: Session, job_id: str, cursor: str) -> int | None:
    """The position of event ``cursor`` of this job, or None when it is not one."""
    return session.scalar(select(JobEvent.id).where(JobEvent.job_id == job_id, JobEvent.public_id == cursor))


def list_events(session: Session, job_id: str, *, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
    """Newest first; ``after`` an event id gives the events before it."""
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        position = _row_id(session, job_id, after)
        if position is None:
            return [], False
        query = query.where(JobEvent.id < position)
    rows = list(session.scalars(query.order_by(JobEvent.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def stream_start(session: Session, job_id: str, cursor: str | None) -> int:
    """Where an SSE stream starts: after event ``cursor`` (Last-Event-ID or ``after``), or at the beginning."""
    if not cursor:
        return 0
    position = _row_id(session, job_id, cursor)
    if position is None:
        raise ServiceError(400, f"{cursor!r} is not an event of job {job_id}.", code="invalid_cursor", param="after")
    return position


def _poll(make_session: Callable[[], Session], job_id: str, position: int) -> tuple[list[JobEvent], bool]:
    with make_session() as session:
        query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > position)
        rows = list(session.scalars(query.order_by(JobEvent.id).limit(500)))
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        session.expunge_all()
        return rows, status is None or status in TERMINAL


async def stream(
    make_session: Callable[[], Session],
    job_id: str,
    *,
    position: int,
    poll_s: float = 0.5,
    keepalive_s: float = 15.0,
) -> AsyncIterator[str]:
    """Yield SSE frames (oldest first) for every event after ``position`` until the job ends, then ``[DONE]``."""
    quiet = 0.0
    while True:
        rows, finished = await anyio.to_thread.run_sync(_poll, make_session, job_id, position)
        for row in rows:
            position = row.id
            event = to_public(row)
            yield f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.model_dump())}\n\n"
        if finished and not rows:
            yield "data: [DONE]\n\n"
            return
        quiet = 0.0 if rows else quiet + poll_s
        if quiet >= keepalive_s:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await anyio.sleep(poll_s)
