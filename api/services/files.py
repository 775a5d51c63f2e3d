"""Dataset files: streamed upload, line-by-line validation report, listing, content, deletion and expiry.

Uploads stream into a temporary blob (size-limited, hashed). Files that are not line-delimited UTF-8 JSON (or
have lines longer or deeper than the deployment accepts) are rejected with 400 and nothing is kept; files with
schema problems (roles, missing assistant turn) are kept with ``status="error"`` and their report (bounded), so a
job on them fails at ``validating_files``. An upload with OpenAI's ``expires_after`` gets an ``expires_at``;
``sweep_expired`` (run by the worker's reaper) deletes expired files that no unfinished job uses.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.db.models import File, Job, utcnow
from api.core.errors import ServiceError, not_found
from api.core.settings import Settings
from api.core.storage import LocalStorage, TooLarge
from api.schemas.files import FileObject, ValidationReport
from api.services.common import new_id, page_by_created, unix
from esft.data.formats import LineLimits
from esft.data.validation import excerpt, validate_jsonl

PURPOSES = ("fine-tune",)
EXPIRY_BOUNDS_S = (3600, 30 * 24 * 3600)  # OpenAI's: one hour to thirty days after created_at
# Lines that cannot be read at all (within the deployment's line limits) make the file unusable: refused, not kept.
FATAL_CODES = ("invalid_utf8", "invalid_json", "line_too_long", "too_deeply_nested", "empty_file")
ACTIVE = ("validating_files", "queued", "running", "paused")  # unfinished: a paused job resumes on its files


def clean_filename(name: str | None) -> str:
    """Display name only (never a path): last path component, printable characters, at most 255 long."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:255] or "upload.jsonl"


def _check_request(filename: str, purpose: str) -> None:
    if purpose not in PURPOSES:
        raise ServiceError(
            400,
            f"purpose must be one of {list(PURPOSES)}, got {purpose!r}.",
            code="invalid_purpose",
            param="purpose",
        )
    if not filename.lower().endswith(".jsonl"):
        raise ServiceError(
            400,
            f"Invalid file format for fine-tuning: {filename!r}; upload a .jsonl file.",
            code="invalid_file_format",
            param="file",
        )


def check_expiry(anchor: str | None, seconds: int | None) -> int | None:
    """Seconds after ``created_at`` the file expires (OpenAI's ``expires_after``), or None to keep it."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise ServiceError(400, f"expires_after.anchor must be 'created_at', got {anchor!r}.",
                           code="invalid_expires_after", param="expires_after.anchor")
    low, high = EXPIRY_BOUNDS_S
    if seconds is None or not low <= seconds <= high:
        raise ServiceError(400, f"expires_after.seconds must be between {low} and {high}, got {seconds!r}.",
                           code="invalid_expires_after", param="expires_after.seconds")
    return seconds


def _fatal_error(report_dict: dict) -> ServiceError | None:
    fatal = [e for e in report_dict["errors"] if e["code"] in FATAL_CODES]
    if not fatal and not any(code in report_dict["error_counts"] for code in FATAL_CODES):
        return None
    first = fatal[0] if fatal else {"code": "invalid_json", "message": "malformed lines"}
    where = f"line {first['line']}: " if first.get("line") and not first["message"].startswith("line") else ""
    count = sum(report_dict["error_counts"].get(code, 0) for code in FATAL_CODES)
    message = f"Invalid JSONL file ({count} unreadable line(s)); first: {where}{first['message']}"
    return ServiceError(400, message, code=first["code"], param="file")


def _validate(path: Path, settings: Settings) -> dict:
    limits = LineLimits(settings.max_line_bytes, settings.max_json_depth)
    return validate_jsonl(path, max_errors=settings.max_report_errors, min_examples=1, limits=limits).to_dict()


async def upload(
    session: Session,
    storage: LocalStorage,
    settings: Settings,
    project_id: str,
    *,
    filename: str | None,
    purpose: str,
    chunks: AsyncIterator[bytes],
    expires_after_s: int | None = None,
) -> File:
    """Store and validate an upload; nothing is kept when it is rejected."""
    name = clean_filename(filename)
    _check_request(name, purpose)
    try:
        tmp, size, digest = await storage.save_stream(chunks, max_bytes=settings.max_upload_bytes)
    except TooLarge:
        raise ServiceError(
            413,
            f"File is larger than the limit of {settings.max_upload_bytes} bytes.",
            code="file_too_large",
            param="file",
        ) from None
    try:
        report = await anyio.to_thread.run_sync(_validate, tmp, settings)
        if (error := _fatal_error(report)) is not None:
            raise error
        file_id, created = new_id("file"), utcnow()
        expires_at = created + timedelta(seconds=expires_after_s) if expires_after_s else None
        row = File(id=file_id, project_id=project_id, filename=name, purpose=purpose, bytes=size, sha256=digest,
                   status="processed" if report["ok"] else "error", storage_key=f"files/{file_id}",
                   validation=report, created_at=created, expires_at=expires_at)
        storage.commit(tmp, row.storage_key)
    except BaseException:
        storage.discard(tmp)
        raise
    try:
        session.add(row)
        session.commit()
    except BaseException:
        storage.delete(row.storage_key)
        raise
    return row


def get(session: Session, project_id: str, file_id: str, *, param: str | None = None) -> File:
    row = session.get(File, file_id)
    if row is None or row.project_id != project_id:
        raise not_found("file", file_id, param=param)
    return row


def list_files(
    session: Session, project_id: str, *, purpose: str | None, after: str | None, limit: int, order: str = "desc"
):
    query = select(File).where(File.project_id == project_id)
    if purpose:
        query = query.where(File.purpose == purpose)
    return page_by_created(session, query, File, after=after, limit=limit, order=order)


def _used_by(session: Session, file_id: str) -> list[str]:
    """Unfinished jobs (a paused one too) that read the file: as training, validation or general-ability file."""
    direct = session.scalars(select(Job.id).where(
        Job.status.in_(ACTIVE), (Job.training_file == file_id) | (Job.validation_file == file_id)
    )).all()
    general = session.execute(select(Job.id, Job.general_files).where(
        Job.status.in_(ACTIVE), Job.general_files.is_not(None)
    )).all()  # a JSON list of {"file", "metric"}: matched here, the same way on SQLite and PostgreSQL
    return [*direct, *(job_id for job_id, files in general if any(g.get("file") == file_id for g in files or []))]


def sweep_expired(session: Session, storage: LocalStorage, *, now: datetime | None = None) -> list[str]:
    """Delete every expired file that no unfinished job uses; returns their ids."""
    now = now or utcnow()
    deleted = []
    for row in session.scalars(select(File).where(File.expires_at.is_not(None), File.expires_at <= now)).all():
        if not _used_by(session, row.id):
            session.delete(row)
            session.commit()
            storage.delete(row.storage_key)
            deleted.append(row.id)
    return deleted


def delete(session: Session, storage: LocalStorage, project_id: str, file_id: str) -> None:
    row = get(session, project_id, file_id)
    users = _used_by(session, file_id)
    if users:
        raise ServiceError(
            409,
            f"File {file_id} is used by active job(s) {list(users)}; cancel them first.",
            code="file_in_use",
            param="file_id",
        )
    session.delete(row)
    session.commit()
    storage.delete(row.storage_key)


def summary(report: dict | None) -> str | None:
    if not report or report.get("ok"):
        return None
    counts = ", ".join(f"{code}: {n}" for code, n in sorted(report.get("error_counts", {}).items()))
    return f"{report.get('n_invalid', 0)} invalid line(s) of {report.get('n_lines', 0)} ({counts})"


def _public_report(stored: dict | None) -> ValidationReport | None:
    """The stored report as shown, with the same bounds on rows written before reports were bounded."""
    if not stored:
        return None
    errors = [{**error, "message": excerpt(error["message"])} for error in stored.get("errors", [])]
    omitted = sum(stored.get("error_counts", {}).values()) - len(errors)
    return ValidationReport.model_validate({**stored, "errors": errors, "errors_omitted": max(omitted, 0)})


def to_public(row: File) -> FileObject:
    report = _public_report(row.validation)
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=unix(row.created_at),
        expires_at=unix(row.expires_at),
        filename=row.filename,
        purpose=row.purpose,
        status=row.status,
        status_details=summary(row.validation),
        sha256=row.sha256,
        validation_report=report,
    )
