"""The model registry: base models (registered by server path, with identity) and immutable ESFT adapters.
Names of a job's checkpoints (``api.services.checkpoints``) are looked up here too, so ``/v1/models/{id}`` serves them.

Adapters are copied into storage under a staging name and renamed into place, then recorded with a sha256
manifest; a half-written adapter is never visible and every download re-checks the hashes.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.db.models import Adapter, BaseModel, Job
from api.core.errors import ServiceError, not_found
from api.core.storage import LocalStorage
from api.schemas.models import ModelObject
from api.services import checkpoints
from api.services.checkpoints import CheckpointModel
from api.services.common import unix
from esft.errors import ESFTError
from esft.io import sha256_file
from esft.models.identity import model_identity

ADAPTER_IGNORE = ("checkpoints",)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def _resolve(path: str) -> Path:
    """The absolute, symlink-free form of a server path given over HTTP; 400 when it cannot be one."""
    try:
        return Path(path).expanduser().resolve()
    except (ValueError, OSError, RuntimeError) as exc:  # NUL byte, name too long, symlink loop, unknown ~user
        raise ServiceError(
            400, f"`path` is not a usable server path: {exc}.", code="invalid_path", param="path"
        ) from None


def _check_links(model_dir: Path, roots: list[Path]) -> None:
    """Refuse a model folder whose files (``config.json``, weights) are links to places outside the roots."""
    for entry in model_dir.iterdir():
        if entry.is_symlink() and not _inside(_resolve(str(entry)), roots):
            raise ServiceError(
                400,
                f"{entry.name} in {str(model_dir)!r} links outside the allowed model roots; copy the file instead.",
                code="path_not_allowed",
                param="path",
            )


def add_base_model(session: Session, model_id: str, path: str, *, roots: list[Path] | None) -> BaseModel:
    """Register a model directory; ``roots`` (None = any, for local admin CLIs) confines HTTP callers."""
    resolved = _resolve(path)
    if roots is not None and not _inside(resolved, roots):
        raise ServiceError(
            400,
            f"Path {path!r} is outside the allowed model roots {[str(r) for r in roots]}.",
            code="path_not_allowed",
            param="path",
        )
    if not resolved.is_dir():
        raise ServiceError(
            400, f"{path!r} is not a directory on the server.", code="model_path_not_found", param="path"
        )
    if roots is not None:
        _check_links(resolved, roots)
    try:
        identity = model_identity(resolved)
    except ESFTError as exc:
        raise ServiceError(400, exc.message, code=exc.code, param="path") from None
    existing = session.get(BaseModel, model_id)
    if existing is not None:
        if existing.path == str(resolved) and existing.config_hash == identity["config_hash"]:
            return existing
        raise ServiceError(
            409,
            f"Model id {model_id!r} is already registered for {existing.path}.",
            code="model_exists",
            param="id",
        )
    row = BaseModel(
        id=model_id,
        path=str(resolved),
        model_type=identity.get("model_type"),
        architectures=identity.get("architectures") or [],
        config_hash=identity["config_hash"],
        identity=identity,
    )
    session.add(row)
    session.commit()
    return row


def _manifest(root: Path) -> dict[str, dict]:
    return {
        str(p.relative_to(root)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def register_adapter(session: Session, storage: LocalStorage, job: Job, name: str, source: Path) -> Adapter:
    """Copy a trained adapter into the registry (idempotent on the job); returns the registry row."""
    existing = session.scalar(select(Adapter).where(Adapter.job_id == job.id))
    if existing is not None:
        return existing
    key = f"adapters/{job.id}"
    if not storage.exists(key):
        storage.commit_tree(source, key, ignore=lambda _dir, names: [n for n in names if n in ADAPTER_IGNORE])
    manifest = _manifest(storage.path(key))
    row = Adapter(
        id=name,
        project_id=job.project_id,
        job_id=job.id,
        base_model=job.model,
        storage_key=key,
        manifest=manifest,
        bytes=sum(entry["bytes"] for entry in manifest.values()),
    )
    session.add(row)
    session.commit()
    return row


def list_models(session: Session, project_id: str | None) -> list[ModelObject]:
    """Base models and the project's adapters (every project's when ``project_id`` is None: an admin key)."""
    bases = session.scalars(select(BaseModel).order_by(BaseModel.created_at)).all()
    query = select(Adapter).order_by(Adapter.created_at)
    if project_id is not None:
        query = query.where(Adapter.project_id == project_id)
    adapters = session.scalars(query).all()
    return [base_public(b) for b in bases] + [adapter_public(a) for a in adapters]


def get_model(session: Session, project_id: str, model_id: str) -> BaseModel | Adapter | CheckpointModel:
    """A base model, one of the project's adapters, or one of its jobs' checkpoints (``...:ckpt-step-N``)."""
    if checkpoints.is_checkpoint_name(model_id):
        return checkpoints.find(session, project_id, model_id)
    base = session.get(BaseModel, model_id)
    if base is not None:
        return base
    adapter = session.get(Adapter, model_id)
    if adapter is None or adapter.project_id != project_id:
        raise not_found("model", model_id, param="model")
    return adapter


def delete_model(session: Session, storage: LocalStorage, project_id: str, model_id: str, *, is_admin: bool) -> None:
    row = get_model(session, project_id, model_id)
    if isinstance(row, CheckpointModel):
        raise ServiceError(
            400, "A checkpoint is not deleted on its own; it goes with its job.", code="not_deletable", param="model"
        )
    if isinstance(row, BaseModel):
        if not is_admin:
            raise ServiceError(
                403, "Only an admin key can delete a base model.", code="permission_denied", param="model"
            )
        if session.scalar(select(Job.id).where(Job.model == model_id).limit(1)) is not None:
            raise ServiceError(
                409,
                f"Base model {model_id!r} has jobs; it cannot be deleted.",
                code="model_in_use",
                param="model",
            )
        session.delete(row)
        session.commit()
        return
    session.delete(row)
    session.commit()
    storage.delete(row.storage_key)


def verify(storage: LocalStorage, adapter: Adapter, *, skip: Collection[str] = ()) -> Path:
    """Return the adapter folder after checking every file against the manifest.

    ``skip`` names files another check covers (the engine skips the weights, which the library checks against
    the sha256 in the verified ``adapter_config.json`` when it loads them), so no file is hashed twice.
    """
    root = storage.path(adapter.storage_key)
    for rel, entry in adapter.manifest.items():
        if rel in skip:
            continue
        path = root / rel
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise ServiceError(
                500, f"Adapter {adapter.id} failed its integrity check ({rel}).", code="adapter_corrupted"
            )
    return root


def archive(storage: LocalStorage, adapter: Adapter) -> Path:
    """Write a verified ``.tar.gz`` of the adapter to a temporary file (the caller deletes it)."""
    return storage.archive(verify(storage, adapter), list(adapter.manifest), adapter.id.replace(":", "_"))


def base_public(row: BaseModel) -> ModelObject:
    details = {
        "model_type": row.model_type,
        "architectures": row.architectures,
        "config_hash": row.config_hash,
    }
    return ModelObject(id=row.id, created=unix(row.created_at), owned_by="system", kind="base", details=details)


def adapter_public(row: Adapter) -> ModelObject:
    details = {"bytes": row.bytes, "files": sorted(row.manifest)}
    return ModelObject(
        id=row.id,
        created=unix(row.created_at),
        owned_by=row.project_id,
        kind="adapter",
        parent=row.base_model,
        fine_tuning_job=row.job_id,
        details=details,
    )


def public(row: BaseModel | Adapter | CheckpointModel) -> ModelObject:
    if isinstance(row, CheckpointModel):
        return checkpoints.public(row)
    return base_public(row) if isinstance(row, BaseModel) else adapter_public(row)
