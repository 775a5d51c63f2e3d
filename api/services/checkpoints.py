"""Checkpoints as models: ``{adapter name}:ckpt-step-{N}`` (a job's ``fine_tuned_model_checkpoint``) names the
adapter the job's training held at step N, usable wherever an adapter is (inference, retrieve, download).

The name is scoped like its adapter: another project's checkpoint, an unknown job or step answer 404 naming
``model``. A checkpoint is converted (``esft.adapters.checkpoint_adapter``: rows in the base model's dtype) on
first use into ``jobs/<job id>/checkpoint_adapters/step-N/`` (written beside and renamed into place, so a crash
never leaves a half-written adapter) and every later load or download reuses it. Only that conversion imports
torch, lazily, and only the first time a checkpoint is used.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.artifacts import EXPERT_CONFIG, TRAIN_DIR, job_key
from api.core.db.models import Checkpoint, Job
from api.core.errors import ServiceError, not_found
from api.core.storage import LocalStorage
from api.schemas.models import ModelObject
from api.services.common import unix
from api.services.jobs import adapter_name
from esft.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, CHECKPOINTS_DIR
from esft.errors import ESFTError

NAME = re.compile(r"^(?P<adapter>.+):ckpt-step-(?P<step>[0-9]{1,9})$")
CACHE_DIR = "checkpoint_adapters"
_CONVERTING = threading.Lock()  # one conversion at a time in this process; other processes race safely


@dataclass(frozen=True)
class CheckpointModel:
    """A checkpoint named as a model, after the project check."""

    name: str
    job_id: str
    project_id: str
    base_model: str
    step: int
    created_at: datetime
    method: str = "esft"  # the job's method.type: only ESFT checkpoints convert to adapters


def is_checkpoint_name(name: str) -> bool:
    return NAME.match(name) is not None


def find(session: Session, project_id: str, name: str) -> CheckpointModel:
    """The caller's checkpoint ``name``; 404 naming ``model`` for anything else (another project's included)."""
    match = NAME.match(name)
    if match is None:
        raise not_found("model", name, param="model")
    job = session.get(Job, match["adapter"].rpartition(":")[2])
    if job is None or job.project_id != project_id or adapter_name(job) != match["adapter"]:
        raise not_found("model", name, param="model")
    step = int(match["step"])
    row = session.scalar(select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step_number == step))
    if row is None:
        raise not_found("model", name, param="model")
    return CheckpointModel(name, job.id, job.project_id, job.model, step, row.created_at,
                           job.method.get("type", "esft"))


def _key(ckpt: CheckpointModel, *parts: str) -> str:
    return "/".join((job_key(ckpt.job_id), *parts))


def _complete(folder: Path) -> bool:
    return (folder / ADAPTER_CONFIG_NAME).is_file()  # written last: its presence means the adapter is whole


def available(storage: LocalStorage, ckpt: CheckpointModel) -> None:
    """Raise 404 when neither the converted adapter nor the checkpoint itself is stored any more."""
    converted = storage.path(_key(ckpt, CACHE_DIR, f"step-{ckpt.step}"))
    source = storage.path(_key(ckpt, TRAIN_DIR, CHECKPOINTS_DIR, f"step-{ckpt.step}"))
    if not _complete(converted) and not source.is_dir():
        raise ServiceError(
            404,
            f"Checkpoint {ckpt.name!r} is no longer stored (training keeps only its newest checkpoints).",
            code="model_not_found",
            param="model",
        )


def adapter_dir(storage: LocalStorage, ckpt: CheckpointModel, model_dir: str | Path) -> Path:
    """The checkpoint's adapter folder, converted on first use and cached under the job's storage.

    Raises:
        ServiceError: 400 for a checkpoint of a job that trained another method than ESFT (its finished model
            serves; its checkpoints hold optimizer state of other weights, not expert rows).
    """
    if ckpt.method not in ("esft", "supervised"):
        raise ServiceError(400, f"Checkpoint {ckpt.name!r} is of a {ckpt.method} job; only ESFT checkpoints serve as "
                           "models. Use the job's fine_tuned_model.", code="checkpoint_not_servable", param="model")
    target = storage.path(_key(ckpt, CACHE_DIR, f"step-{ckpt.step}"))
    if _complete(target):
        return target
    available(storage, ckpt)
    source = storage.path(_key(ckpt, TRAIN_DIR, CHECKPOINTS_DIR, f"step-{ckpt.step}"))
    with _CONVERTING:
        if _complete(target):
            return target
        from esft.adapters.checkpoint import checkpoint_adapter  # torch: only here, on a checkpoint's first use

        try:
            adapter = checkpoint_adapter(source, storage.path(_key(ckpt, EXPERT_CONFIG)), model_dir)
            adapter.save_pretrained(target)
        except (ESFTError, OSError) as exc:
            if _complete(target):  # another process converted it meanwhile
                return target
            available(storage, ckpt)  # training removed the checkpoint while it was read
            raise ServiceError(
                500, f"Checkpoint {ckpt.name!r} could not be converted to an adapter.", code="checkpoint_unreadable"
            ) from exc
    return target


def archive(storage: LocalStorage, ckpt: CheckpointModel, model_dir: str | Path) -> Path:
    """A ``.tar.gz`` of the checkpoint's adapter (weights re-checked against ``adapter_config.json`` first)."""
    from esft.adapters.adapter import check_weights  # torch: only here, as for the conversion

    root = adapter_dir(storage, ckpt, model_dir)
    try:
        check_weights(root)
    except ESFTError:
        raise ServiceError(500, f"Adapter {ckpt.name} failed its integrity check.", code="adapter_corrupted") from None
    return storage.archive(root, [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME], ckpt.name.replace(":", "_"))


def public(ckpt: CheckpointModel) -> ModelObject:
    return ModelObject(
        id=ckpt.name,
        created=unix(ckpt.created_at),
        owned_by=ckpt.project_id,
        kind="checkpoint",
        parent=ckpt.base_model,
        fine_tuning_job=ckpt.job_id,
        details={"step_number": ckpt.step},
    )
