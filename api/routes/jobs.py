"""``/v1/fine_tuning/jobs``: create, list, retrieve, cancel, pause, resume, events (JSON/SSE), checkpoints,
artifacts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, StreamingResponse

from api.deps import PrincipalDep, QueueDep, SessionDep, SettingsDep, StorageDep
from api.schemas.common import COMMON_ERRORS, binary_response, error_responses
from api.schemas.jobs import (
    ArtifactList,
    CheckpointList,
    JobCreate,
    JobEventList,
    JobList,
    JobObject,
    JobStatus,
)
from api.services import artifacts, events, jobs, quotas

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine_tuning"], responses=COMMON_ERRORS)
Limit = Annotated[int, Query(ge=1, le=100)]


@router.post("", name="create_job", response_model=JobObject)
def create_job(
    principal: PrincipalDep, session: SessionDep, queue: QueueDep, settings: SettingsDep, body: JobCreate
) -> JobObject:
    quotas.check_devices(session, settings, principal, quotas.devices_of(body))
    quotas.check_storage(session, settings, principal, 1, stored=False, what="the job's model")  # room left?
    job = jobs.create(session, queue, settings, principal.project_id, body)
    return jobs.to_public(session, job)


METADATA_QUERY = {
    "name": "metadata",
    "in": "query",
    "required": False,
    "style": "deepObject",
    "explode": True,
    "description": "keep jobs whose metadata has every pair: `metadata[key]=value` (as OpenAI's SDK sends it)",
    "schema": {"type": "object", "additionalProperties": {"type": "string"}},
}


def _metadata_filter(request: Request) -> dict[str, str]:
    """``metadata[key]=value`` query pairs (a deep object FastAPI cannot declare as a parameter)."""
    pairs = {}
    for name, value in request.query_params.multi_items():
        if name.startswith("metadata[") and name.endswith("]"):
            pairs[name[len("metadata[") : -1]] = value
    return pairs


@router.get("", name="list_jobs", response_model=JobList, openapi_extra={"parameters": [METADATA_QUERY]})
def list_jobs(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    after: str | None = None,
    limit: Limit = 20,
    status: JobStatus | None = None,
) -> JobList:
    metadata = _metadata_filter(request)
    rows, has_more = jobs.list_jobs(
        session, principal.project_id, status=status, metadata=metadata, after=after, limit=limit
    )
    return JobList.of([jobs.to_public(session, r) for r in rows], has_more)


@router.get("/{fine_tuning_job_id}", name="retrieve_job", response_model=JobObject)
def retrieve_job(principal: PrincipalDep, session: SessionDep, fine_tuning_job_id: str) -> JobObject:
    return jobs.to_public(session, jobs.get(session, principal.project_id, fine_tuning_job_id))


@router.post(
    "/{fine_tuning_job_id}/cancel",
    name="cancel_job",
    response_model=JobObject,
    responses=error_responses(409),
)
def cancel_job(principal: PrincipalDep, session: SessionDep, fine_tuning_job_id: str) -> JobObject:
    return jobs.to_public(session, jobs.cancel(session, principal.project_id, fine_tuning_job_id))


@router.post(
    "/{fine_tuning_job_id}/pause",
    name="pause_job",
    response_model=JobObject,
    responses=error_responses(409),
)
def pause_job(principal: PrincipalDep, session: SessionDep, fine_tuning_job_id: str) -> JobObject:
    """Checkpoint and release the device; ``paused`` at once when no step runs, else at the next checkpoint."""
    return jobs.to_public(session, jobs.pause(session, principal.project_id, fine_tuning_job_id))


@router.post(
    "/{fine_tuning_job_id}/resume",
    name="resume_job",
    response_model=JobObject,
    responses=error_responses(409),
)
def resume_job(
    principal: PrincipalDep, session: SessionDep, queue: QueueDep, settings: SettingsDep, fine_tuning_job_id: str
) -> JobObject:
    """Continue a paused job from its step (training from its latest checkpoint)."""
    job = jobs.get(session, principal.project_id, fine_tuning_job_id)
    if job.status == "paused":
        quotas.check_devices(session, settings, principal, quotas.devices_of(job))
    return jobs.to_public(session, jobs.resume(session, queue, principal.project_id, fine_tuning_job_id))


@router.get(
    "/{fine_tuning_job_id}/events",
    name="list_events",
    response_model=JobEventList,
    responses={200: {"content": {"text/event-stream": {}}}},
)
def list_events(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    fine_tuning_job_id: str,
    after: str | None = None,
    limit: Limit = 20,
    stream: Annotated[bool, Query(description="Server-Sent Events, oldest first, until the job ends")] = False,
    last_event_id: Annotated[str | None, Header(description="resume a stream after this event")] = None,
):
    """Newest first (``after`` gives older events); ``stream=true``: oldest first, resumable."""
    job = jobs.get(session, principal.project_id, fine_tuning_job_id)
    if stream:
        position = events.stream_start(session, job.id, last_event_id or after)
        frames = events.stream(request.app.state.session_factory, job.id, position=position)
        return StreamingResponse(frames, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    rows, has_more = events.list_events(session, job.id, after=after, limit=limit)
    return JobEventList.of([events.to_public(r) for r in rows], has_more)


@router.get("/{fine_tuning_job_id}/checkpoints", name="list_checkpoints", response_model=CheckpointList)
def list_checkpoints(
    principal: PrincipalDep,
    session: SessionDep,
    fine_tuning_job_id: str,
    after: str | None = None,
    limit: Limit = 10,
) -> CheckpointList:
    job = jobs.get(session, principal.project_id, fine_tuning_job_id)
    rows, has_more = artifacts.list_checkpoints(session, job, after=after, limit=limit)
    name = jobs.adapter_name(job)
    return CheckpointList.of([artifacts.checkpoint_public(r, name) for r in rows], has_more)


@router.get("/{fine_tuning_job_id}/artifacts", name="list_artifacts", response_model=ArtifactList)
def list_artifacts(
    principal: PrincipalDep, session: SessionDep, storage: StorageDep, fine_tuning_job_id: str
) -> ArtifactList:
    job = jobs.get(session, principal.project_id, fine_tuning_job_id)
    return ArtifactList.of(artifacts.list_artifacts(storage, job), key="name")


@router.get(
    "/{fine_tuning_job_id}/artifacts/{name}",
    name="download_artifact",
    response_class=FileResponse,
    responses=binary_response("The artifact (JSON, PNG, CSV or JSONL)."),
)
def download_artifact(
    principal: PrincipalDep, session: SessionDep, storage: StorageDep, fine_tuning_job_id: str, name: str
) -> FileResponse:
    job = jobs.get(session, principal.project_id, fine_tuning_job_id)
    path, content_type = artifacts.get_artifact(storage, job, name)
    return FileResponse(path, media_type=content_type, filename=name)
