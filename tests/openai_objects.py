"""One check for every object the API returns: it parses strictly as the official ``openai`` SDK's own type.

``check_openai(obj)`` dispatches on ``object`` (lists check every item and their ``first_id``/``last_id``).
Two documented exceptions are checked against our own schema instead, and the rest of such a job still
against the SDK: ``status: "paused"`` and ``method.type`` values outside OpenAI's set (``esft``).
"""

from __future__ import annotations

from typing import Any

from openai.types import FileDeleted, FileObject, Model, ModelDeleted
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

from api.schemas.jobs import JobObject

OPENAI_METHODS = ("supervised", "dpo", "reinforcement")
TYPES = {
    "fine_tuning.job.event": FineTuningJobEvent,
    "fine_tuning.job.checkpoint": FineTuningJobCheckpoint,
    "file": FileObject,
    "model": Model,
}
DELETED = {"file": FileDeleted, "model": ModelDeleted}


def _check_job(obj: dict[str, Any]) -> None:
    outside = obj["status"] == "paused" or (obj.get("method") or {}).get("type") not in (None, *OPENAI_METHODS)
    if outside:
        JobObject.model_validate(obj, strict=True)  # our schema covers the documented exceptions
        obj = {**obj, "status": "running" if obj["status"] == "paused" else obj["status"], "method": None}
    FineTuningJob.model_validate(obj, strict=True)


def check_openai(obj: Any) -> Any:
    """Validate a response body (dict or ``httpx`` response) strictly with the SDK's types; returns the body."""
    if hasattr(obj, "json"):
        obj = obj.json()
    kind = obj["object"]
    if kind == "list":
        assert isinstance(obj["has_more"], bool), obj
        ids = [item["id"] for item in obj["data"]]
        assert obj["first_id"] == (ids[0] if ids else None) and obj["last_id"] == (ids[-1] if ids else None), obj
        for item in obj["data"]:
            check_openai(item)
    elif kind == "fine_tuning.job":
        _check_job(obj)
    elif "deleted" in obj:
        DELETED[kind].model_validate(obj, strict=True)
    else:
        TYPES[kind].model_validate(obj, strict=True)
    return obj
