"""Helpers every service uses: server-made ids, Unix timestamps and cursor pagination."""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import Session


def new_id(prefix: str) -> str:
    """``prefix-`` + 24 hex characters: safe as a path segment and unguessable."""
    return f"{prefix}-{secrets.token_hex(12)}"


def unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def page_newest_first(
    session: Session, query: Select, model: Any, *, after: str | None, limit: int
) -> tuple[list[Any], bool]:
    """Rows newest first after the cursor row ``after`` (an id); returns ``(rows, has_more)``.

    An unknown cursor yields an empty page rather than an error, as OpenAI does.
    """
    if after is not None:
        cursor = session.execute(select(model.created_at, model.id).where(model.id == after)).one_or_none()
        if cursor is None:
            return [], False
        created, ident = cursor
        query = query.where(or_(model.created_at < created, and_(model.created_at == created, model.id < ident)))
    rows = list(session.scalars(query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
