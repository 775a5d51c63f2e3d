"""Projects and API keys: keys are shown once and stored as sha256 hashes; a key maps to one project."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.db.models import ApiKey, Project
from api.core.errors import ServiceError
from api.services.common import new_id

KEY_PREFIX = "sk-esft-"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the project every query is scoped to, and whether admin endpoints are allowed."""

    project_id: str
    key_id: str
    is_admin: bool


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def get_or_create_project(session: Session, name: str) -> Project:
    project = session.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(id=new_id("proj"), name=name)
        session.add(project)
        session.flush()
    return project


def create_key(session: Session, project_name: str, *, name: str = "", is_admin: bool = False) -> tuple[str, ApiKey]:
    """Create a key for a project (created if new); returns the raw key, which is never stored."""
    project = get_or_create_project(session, project_name)
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id("key"),
        project_id=project.id,
        name=name,
        key_hash=hash_key(raw),
        prefix=raw[:12],
        is_admin=is_admin,
    )
    session.add(key)
    session.flush()
    return raw, key


def authenticate(session: Session, authorization: str | None) -> Principal:
    """Resolve an ``Authorization: Bearer <key>`` header to a principal, or raise 401."""
    if not authorization:
        raise ServiceError(
            401,
            "Missing API key: send `Authorization: Bearer <key>` (create one with `esft keys create`).",
            code="missing_api_key",
        )
    scheme, _, raw = authorization.partition(" ")
    if scheme.lower() != "bearer" or not raw.strip():
        raise ServiceError(401, "Malformed Authorization header; expected `Bearer <key>`.", code="invalid_api_key")
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(raw.strip())))
    if key is None or key.revoked_at is not None:
        raise ServiceError(401, "Incorrect API key provided.", code="invalid_api_key")
    return Principal(project_id=key.project_id, key_id=key.id, is_admin=key.is_admin)


def revoke_key(session: Session, key_id: str) -> None:
    key = session.get(ApiKey, key_id)
    if key is not None:
        key.revoked_at = datetime.now(UTC)
