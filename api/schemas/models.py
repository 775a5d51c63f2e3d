"""Models: registered base models, the ESFT adapters trained on them and their jobs' checkpoints (``parent``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from api.schemas.common import ListPage, StrictRequest
from esft.evaluation.metrics import SUITE_METRICS

MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SuiteMetric = Literal[SUITE_METRICS]  # type: ignore[valid-type]


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: Literal["base", "adapter", "checkpoint"]
    parent: str | None = Field(default=None, description="the base model of an adapter or checkpoint")
    fine_tuning_job: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class ModelList(ListPage):
    data: list[ModelObject]


class GeneralSuiteFile(StrictRequest):
    """One general-ability file of a base model's suite: a JSONL file on the server and how to score it."""

    name: str = Field(pattern=MODEL_ID_PATTERN, description="shown in reports, e.g. `arithmetic`")
    path: str = Field(min_length=1, max_length=4096, description="JSONL file inside an allowed model root")
    metric: SuiteMetric = Field(default="exact_match", description="how answers are scored (0-100)")  # type: ignore


class BaseModelCreate(StrictRequest):
    """Register a model directory on the server (``save_pretrained`` layout) under an id."""

    id: str = Field(pattern=MODEL_ID_PATTERN, description="name jobs use in `model`")
    path: str = Field(min_length=1, max_length=4096, description="directory inside an allowed model root")
    general_suite: list[GeneralSuiteFile] | None = Field(
        default=None, max_length=16, description="general-ability files every job on this model is evaluated on "
        "(base vs adapter), to show what an adapter kept; replaces the suite when the model is registered again")
