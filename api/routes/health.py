"""Liveness and readiness probes (public, like the API description; every `/v1` route needs a key)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from sqlalchemy import text

from api.core.errors import ServiceError
from api.deps import SessionDep
from api.schemas.common import error_responses

router = APIRouter(tags=["health"])


@router.get("/health", name="live")
def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", name="ready", responses=error_responses(503))
def ready(request: Request, session: SessionDep) -> dict[str, str]:
    """Ready when the database answers and every mounted part passes its check (inference engines alive)."""
    session.execute(text("SELECT 1"))
    session.close()
    for check in request.app.state.readiness_checks:
        if (problem := check()) is not None:
            raise ServiceError(503, problem, code="not_ready")
    return {"status": "ready"}
