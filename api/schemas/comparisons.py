"""Method comparisons: the create request (methods, shared files and budget) and the comparison object."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import ListPage, StrictRequest
from api.schemas.jobs import Hyperparameters, JobStatus, MethodType

ComparisonStatus = Literal["running", "succeeded", "failed"]


class ComparisonCreate(StrictRequest):
    """Train every method in ``methods`` on the same files with the same ``hyperparameters`` (the budget)."""

    model: str = Field(description="a registered base model id (GET /v1/models)")
    training_file: str
    validation_file: str | None = None
    methods: list[MethodType] = Field(min_length=2, max_length=6, description="the methods to compare, each once")
    hyperparameters: Hyperparameters = Field(  # type: ignore[valid-type]
        default_factory=Hyperparameters, description="the budget every method trains with")
    seed: int | None = Field(default=None, ge=0, lt=2**31, description="one seed for every job")
    metadata: dict[str, str] | None = Field(default=None, max_length=15)


class ComparisonJob(BaseModel):
    id: str
    method: str
    status: JobStatus
    fine_tuned_model: str | None = None


class ComparisonObject(BaseModel):
    id: str
    object: Literal["fine_tuning.comparison"] = "fine_tuning.comparison"
    created_at: int
    model: str
    status: ComparisonStatus = Field(description="succeeded once every job ended and the report is written")
    methods: list[str]
    jobs: list[ComparisonJob]
    report: dict[str, Any] | None = Field(
        default=None, description="per column (task metrics, retention, adapter and optimizer-state bytes, train "
        "time) each method's value and the winner; also as `report.md` and `report.png`")


class ComparisonList(ListPage):
    data: list[ComparisonObject]
