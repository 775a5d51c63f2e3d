"""``/v1/files``: upload (multipart, streamed), list, retrieve, content, delete; per project."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Query, UploadFile
from fastapi.responses import FileResponse

from api.core.errors import ServiceError
from api.core.storage import CHUNK
from api.deps import PrincipalDep, SessionDep, SettingsDep, StorageDep
from api.schemas.common import COMMON_ERRORS, DeletedObject, binary_response, error_responses
from api.schemas.files import FileList, FileObject
from api.services import files, quotas

router = APIRouter(prefix="/v1/files", tags=["files"], responses=COMMON_ERRORS)


async def _chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    while chunk := await upload.read(CHUNK):
        yield chunk


@router.post("", name="create", response_model=FileObject, responses=error_responses(413))
async def create(
    principal: PrincipalDep,
    session: SessionDep,
    storage: StorageDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="a .jsonl dataset")],
    purpose: Annotated[str, Form(description="must be 'fine-tune'")],
    expires_anchor: Annotated[
        str | None, Form(alias="expires_after[anchor]", description="OpenAI's expires_after: 'created_at'")
    ] = None,
    expires_seconds: Annotated[
        int | None, Form(alias="expires_after[seconds]", description="seconds after the anchor (3600..2592000)")
    ] = None,
) -> FileObject:
    expires_after_s = files.check_expiry(expires_anchor, expires_seconds)
    quotas.check_storage(session, settings, principal, 1, stored=False)  # already full: refuse before reading
    row = await files.upload(
        session,
        storage,
        settings,
        principal.project_id,
        filename=file.filename,
        purpose=purpose,
        chunks=_chunks(file),
        expires_after_s=expires_after_s,
    )
    try:
        quotas.check_storage(session, settings, principal, row.bytes, stored=True)
    except ServiceError:
        files.delete(session, storage, principal.project_id, row.id)
        raise
    return files.to_public(row)


@router.get("", name="list", response_model=FileList)
def list_(
    principal: PrincipalDep,
    session: SessionDep,
    purpose: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    order: Literal["asc", "desc"] = "desc",
) -> FileList:
    rows, has_more = files.list_files(
        session, principal.project_id, purpose=purpose, after=after, limit=limit, order=order
    )
    return FileList.of([files.to_public(r) for r in rows], has_more)


@router.get("/{file_id}", name="retrieve", response_model=FileObject)
def retrieve(principal: PrincipalDep, session: SessionDep, file_id: str) -> FileObject:
    return files.to_public(files.get(session, principal.project_id, file_id))


@router.get(
    "/{file_id}/content",
    name="content",
    response_class=FileResponse,
    responses=binary_response("The file's bytes."),
)
def content(principal: PrincipalDep, session: SessionDep, storage: StorageDep, file_id: str) -> FileResponse:
    row = files.get(session, principal.project_id, file_id)
    return FileResponse(storage.path(row.storage_key), media_type="application/octet-stream", filename=row.filename)


@router.delete("/{file_id}", name="delete", response_model=DeletedObject, responses=error_responses(409))
def delete(principal: PrincipalDep, session: SessionDep, storage: StorageDep, file_id: str) -> DeletedObject:
    files.delete(session, storage, principal.project_id, file_id)
    return DeletedObject(id=file_id, object="file", deleted=True)
