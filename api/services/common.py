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


def page_by_created(
    session: Session, query: Select, model: Any, *, after: str | None, limit: int, order: str = "desc"
) -> tuple[list[Any], bool]:
    """Rows by creation (``desc``: newest first) after the cursor row ``after`` (an id); ``(rows, has_more)``.

    An unknown cursor yields an empty page rather than an error, as OpenAI does.
    """
    if after is not None:
        cursor = session.execute(select(model.created_at, model.id).where(model.id == after)).one_or_none()
        if cursor is None:
            return [], False
        created, ident = cursor
        if order == "desc":
            query = query.where(or_(model.created_at < created, and_(model.created_at == created, model.id < ident)))
        else:
            query = query.where(or_(model.created_at > created, and_(model.created_at == created, model.id > ident)))
    keys = (model.created_at.desc(), model.id.desc()) if order == "desc" else (model.created_at, model.id)
    rows = list(session.scalars(query.order_by(*keys).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
