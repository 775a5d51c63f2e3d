"""``/v1/models``: base models and the caller's adapters; retrieve, delete and download an adapter archive."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.core.db.models import Adapter
from api.core.errors import ServiceError
from api.deps import PrincipalDep, SessionDep, StorageDep
from api.schemas.common import COMMON_ERRORS, DeletedObject, binary_response, error_responses
from api.schemas.models import ModelList, ModelObject
from api.services import registry

router = APIRouter(prefix="/v1/models", tags=["models"], responses=COMMON_ERRORS)


@router.get("", name="list", response_model=ModelList)
def list_(principal: PrincipalDep, session: SessionDep) -> ModelList:
    return ModelList.of(registry.list_models(session, principal.project_id))


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
    responses=binary_response("The adapter as a .tar.gz archive."),
)
def download(principal: PrincipalDep, session: SessionDep, storage: StorageDep, model: str) -> FileResponse:
    row = registry.get_model(session, principal.project_id, model)
    if not isinstance(row, Adapter):
        raise ServiceError(
            400,
            "Only adapters can be downloaded; base models live on the server.",
            code="not_an_adapter",
            param="model",
        )
    path = registry.archive(storage, row)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"{row.id.replace(':', '_')}.tar.gz",
        background=BackgroundTask(path.unlink, missing_ok=True),
    )
