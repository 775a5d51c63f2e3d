"""Projects and API keys: keys are shown once and stored as sha256 hashes; a key maps to one project."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.db.models import ApiKey, Project
from api.core.errors import ServiceError, not_found
from api.schemas.keys import ApiKeyObject
from api.services.common import new_id, unix

KEY_PREFIX = "sk-esft-"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the project every query is scoped to, and whether admin endpoints are allowed."""

    project_id: str
    key_id: str
    is_admin: bool
    overrides: dict[str, Any] = field(default_factory=dict)  # limits set for the project, then the key

    def limit(self, defaults: dict[str, float], name: str) -> float:
        """The limit ``name`` for this caller: the key's override, the project's, else the deployment default."""
        return float(self.overrides.get(name, defaults[name]))


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
    row = session.execute(
        select(ApiKey, Project.limits).join(Project).where(ApiKey.key_hash == hash_key(raw.strip()))
    ).first()
    if row is None or row[0].revoked_at is not None:
        raise ServiceError(401, "Incorrect API key provided.", code="invalid_api_key")
    key, project_limits = row
    overrides = {**(project_limits or {}), **(key.limits or {})}
    return Principal(project_id=key.project_id, key_id=key.id, is_admin=key.is_admin, overrides=overrides)


def to_public(key: ApiKey, project: str) -> ApiKeyObject:
    return ApiKeyObject(
        id=key.id,
        name=key.name,
        redacted_value=f"{key.prefix}...",
        project_id=key.project_id,
        project=project,
        is_admin=key.is_admin,
        created_at=unix(key.created_at),
        revoked_at=unix(key.revoked_at),
        limits=key.limits,
    )


def list_keys(session: Session, project_id: str | None = None) -> list[tuple[ApiKey, str]]:
    """(key, project name) rows, oldest first; every project's when ``project_id`` is None."""
    query = select(ApiKey, Project.name).join(Project).order_by(ApiKey.created_at, ApiKey.id)
    if project_id is not None:
        query = query.where(ApiKey.project_id == project_id)
    return [(key, name) for key, name in session.execute(query)]


def find_key(session: Session, ident: str, project_id: str | None = None) -> ApiKey:
    """A key by id or by its shown prefix (``sk-esft-abcd``); 404 for another project's key when scoped."""
    key = session.get(ApiKey, ident)
    if key is None and ident.startswith(KEY_PREFIX):
        matches = session.scalars(select(ApiKey).where(ApiKey.prefix == ident[:12])).all()
        key = matches[0] if len(matches) == 1 else None
    if key is None or (project_id is not None and key.project_id != project_id):
        raise not_found("api_key", ident, param="key_id")
    return key


def revoke_key(session: Session, key: ApiKey) -> ApiKey:
    """Revoke now: the next request with this key is a 401 (keys are checked on every request)."""
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
    return key


LIMIT_NAMES = ("requests_per_second", "burst", "concurrent_devices", "stored_bytes", "pinned_bytes")


def set_limits(target: Project | ApiKey, values: dict[str, float | None]) -> dict[str, Any]:
    """Merge overrides into a project or key (``None`` drops one, back to the default); returns the result."""
    unknown = sorted(set(values) - set(LIMIT_NAMES))
    if unknown:
        raise ServiceError(400, f"Unknown limit {unknown[0]!r}; known: {', '.join(LIMIT_NAMES)}.",
                           code="invalid_value", param=unknown[0])
    limits = dict(target.limits or {})
    for name, value in values.items():
        if value is None:
            limits.pop(name, None)
        elif value < 0:
            raise ServiceError(400, f"Limit {name} must be >= 0 (0 turns it off).", code="invalid_value", param=name)
        else:
            limits[name] = value
    target.limits = limits or None
    return limits
