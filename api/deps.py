"""Annotated dependencies of the routes: settings, DB session, storage, queue and the caller."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from api.core.errors import ServiceError
from api.core.queue import Queue
from api.core.settings import Settings
from api.core.storage import LocalStorage
from api.services.auth import Principal, authenticate
from api.services.quotas import check_rate

_bearer = HTTPBearer(auto_error=False, description="An API key from `esft keys create`")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    with request.app.state.session_factory() as session:
        yield session


def get_storage(request: Request) -> LocalStorage:
    return request.app.state.storage


def get_queue(request: Request) -> Queue:
    return request.app.state.queue


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StorageDep = Annotated[LocalStorage, Depends(get_storage)]
QueueDep = Annotated[Queue, Depends(get_queue)]


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, checked once per request (key and rate limit) and kept on ``request.state.principal``.

    The key is read in a session of its own, closed at once: a request that then waits (a chat generating
    for seconds) holds no database connection, so concurrent chats cannot drain the pool.
    """
    header = f"Bearer {credentials.credentials}" if credentials else request.headers.get("authorization")
    with request.app.state.session_factory() as session:
        request.state.principal = principal = authenticate(session, header)
    check_rate(request.app.state.rate_buckets, request.app.state.settings, principal)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_admin(principal: PrincipalDep) -> Principal:
    if not principal.is_admin:
        raise ServiceError(
            403,
            "This endpoint needs an admin API key (`esft keys create --admin`).",
            code="permission_denied",
        )
    return principal


AdminDep = Annotated[Principal, Depends(get_admin)]
