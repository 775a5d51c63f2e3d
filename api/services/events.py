"""Job events: paginated lists (oldest first, cursor ``after``) and a Server-Sent Events tail."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import anyio
import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.db.models import Job, JobEvent
from api.core.runs import TERMINAL
from api.schemas.jobs import JobEventObject
from api.services.common import unix

EVENT_PREFIX = "ftevent-"


def parse_cursor(after: str | None) -> int:
    if after and after.startswith(EVENT_PREFIX) and after[len(EVENT_PREFIX) :].isdigit():
        return int(after[len(EVENT_PREFIX) :])
    return 0


def to_public(event: JobEvent) -> JobEventObject:
    return JobEventObject(
        id=f"{EVENT_PREFIX}{event.id}",
        created_at=unix(event.created_at),
        level=event.level,
        message=event.message,
        type=event.type,
        data=event.data,
    )


def list_events(session: Session, job_id: str, *, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
    rows = list(
        session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.id > parse_cursor(after))
            .order_by(JobEvent.id)
            .limit(limit + 1)
        )
    )
    return rows[:limit], len(rows) > limit


def _poll(make_session: Callable[[], Session], job_id: str, cursor: int) -> tuple[list[JobEventObject], bool]:
    with make_session() as session:
        rows, _ = list_events(session, job_id, after=f"{EVENT_PREFIX}{cursor}", limit=500)
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        return [to_public(row) for row in rows], status is None or status in TERMINAL


async def stream(
    make_session: Callable[[], Session],
    job_id: str,
    *,
    after: str | None,
    poll_s: float = 0.5,
    keepalive_s: float = 15.0,
) -> AsyncIterator[str]:
    """Yield SSE frames for every event after the cursor until the job ends, then ``data: [DONE]``."""
    cursor, quiet = parse_cursor(after), 0.0
    while True:
        events, finished = await anyio.to_thread.run_sync(_poll, make_session, job_id, cursor)
        for event in events:
            cursor = int(event.id[len(EVENT_PREFIX) :])
            yield f"id: {event.id}\nevent: {event.type}\ndata: {json.dumps(event.model_dump())}\n\n"
        if finished and not events:
            yield "data: [DONE]\n\n"
            return
        quiet = 0.0 if events else quiet + poll_s
        if quiet >= keepalive_s:
            quiet = 0.0
            yield ": keep-alive\n\n"
        await anyio.sleep(poll_s)
