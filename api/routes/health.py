"""Liveness and readiness probes (public, like the API description; every `/v1` route needs a key)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from api.deps import SessionDep

router = APIRouter(tags=["health"])


@router.get("/health", name="live")
def live() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/health/ready", name="ready")
def ready(session: SessionDep) -> dict[str, str]:
    session.execute(text("SELECT 1"))
    return {"status": "ready"}
