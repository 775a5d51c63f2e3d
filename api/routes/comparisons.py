"""``/v1/fine_tuning/comparisons``: several methods on the same files and budget, and their side-by-side report."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from api.deps import PrincipalDep, QueueDep, SessionDep, SettingsDep, StorageDep
from api.schemas.common import COMMON_ERRORS, binary_response
from api.schemas.comparisons import ComparisonCreate, ComparisonList, ComparisonObject
from api.services import comparisons

router = APIRouter(prefix="/v1/fine_tuning/comparisons", tags=["fine_tuning"], responses=COMMON_ERRORS)
Limit = Annotated[int, Query(ge=1, le=100)]
MEDIA = {"report.json": "application/json", "report.md": "text/markdown", "report.png": "image/png"}


@router.post("", name="create_comparison", response_model=ComparisonObject)
def create_comparison(
    principal: PrincipalDep, session: SessionDep, queue: QueueDep, settings: SettingsDep, body: ComparisonCreate
) -> ComparisonObject:
    row = comparisons.create(session, queue, settings, principal.project_id, body)
    return comparisons.to_public(session, row)


@router.get("", name="list_comparisons", response_model=ComparisonList)
def list_comparisons(
    principal: PrincipalDep, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> ComparisonList:
    rows, has_more = comparisons.list_comparisons(session, principal.project_id, after=after, limit=limit)
    return ComparisonList.of([comparisons.to_public(session, row) for row in rows], has_more)


@router.get("/{comparison_id}", name="retrieve_comparison", response_model=ComparisonObject)
def retrieve_comparison(
    comparison_id: str, principal: PrincipalDep, session: SessionDep, storage: StorageDep
) -> ComparisonObject:
    return comparisons.to_public(session, comparisons.get(session, storage, principal.project_id, comparison_id))


@router.get("/{comparison_id}/{name}", name="download_comparison_report", response_class=FileResponse,
            responses=binary_response(f"The report, one of {', '.join(MEDIA)}."))
def download_comparison_report(
    comparison_id: str, name: str, principal: PrincipalDep, session: SessionDep, storage: StorageDep
) -> FileResponse:
    path = comparisons.report_file(session, storage, principal.project_id, comparison_id, name)
    return FileResponse(path, media_type=MEDIA[name])
