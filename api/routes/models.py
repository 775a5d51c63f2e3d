"""``/v1/models``: base models and the caller's adapters; retrieve, delete and download an adapter archive.

A job's checkpoint names (``{adapter}:ckpt-step-N``) can be retrieved and downloaded like adapters.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.core.db.models import Adapter, BaseModel
from api.core.errors import ServiceError
from api.deps import PrincipalDep, SessionDep, StorageDep
from api.schemas.common import COMMON_ERRORS, DeletedObject, binary_response, error_responses
from api.schemas.models import ModelList, ModelObject
from api.services import checkpoints, registry

router = APIRouter(prefix="/v1/models", tags=["models"], responses=COMMON_ERRORS)


@router.get("", name="list", response_model=ModelList)
def list_(principal: PrincipalDep, session: SessionDep) -> ModelList:
    """Base models and the caller's adapters; an admin key sees every project's adapters."""
    return ModelList.of(registry.list_models(session, None if principal.is_admin else principal.project_id))


@router.get("/{model}", name="retrieve", response_model=ModelObject)
def retrieve(principal: PrincipalDep, session: SessionDep, model: str) -> ModelObject:
    return registry.public(registry.get_model(session, principal.project_id, model))


@router.delete("/{model}", name="delete", response_model=DeletedObject, responses=error_responses(403, 409))
def delete(principal: PrincipalDep, session: SessionDep, storage: StorageDep, model: str) -> DeletedObject:
    registry.delete_model(session, storage, principal.project_id, model, is_admin=principal.is_admin)
    return DeletedObject(id=model, object="model", deleted=True)


@router.get(
    "/{model}/content",
    name="download",
    response_class=FileResponse,
    responses=binary_response("The adapter (or the checkpoint as an adapter) as a .tar.gz archive."),
)
def download(principal: PrincipalDep, session: SessionDep, storage: StorageDep, model: str) -> FileResponse:
    row = registry.get_model(session, principal.project_id, model)
    if isinstance(row, BaseModel):
        raise ServiceError(
            400,
            "Only adapters can be downloaded; base models live on the server.",
            code="not_an_adapter",
            param="model",
        )
    if isinstance(row, Adapter):
        path = registry.archive(storage, row)
    else:  # a checkpoint: converted to an adapter on first use
        path = checkpoints.archive(storage, row, session.get(BaseModel, row.base_model).path)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{model.replace(':', '_')}.tar.gz",
        background=BackgroundTask(path.unlink, missing_ok=True),
    )
