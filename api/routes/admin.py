"""``/v1/admin``: operator actions that need an admin key (registering base models from server paths)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import AdminDep, SessionDep, SettingsDep
from api.schemas.common import COMMON_ERRORS, error_responses
from api.schemas.models import BaseModelCreate, ModelObject
from api.services import registry

router = APIRouter(prefix="/v1/admin", tags=["admin"], responses=COMMON_ERRORS)


@router.post("/models", name="create_base_model", response_model=ModelObject, responses=error_responses(403, 409))
def create_base_model(_: AdminDep, session: SessionDep, settings: SettingsDep, body: BaseModelCreate) -> ModelObject:
    row = registry.add_base_model(session, body.id, body.path, roots=settings.allowed_model_roots,
                                  general_suite=body.general_suite)
    return registry.base_public(row)
