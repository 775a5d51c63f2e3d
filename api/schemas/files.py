"""Files: the uploaded dataset object and its validation report."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from api.schemas.common import ListPage


class ValidationIssue(BaseModel):
    line: int | None = Field(description="1-based line, or null for a file-level problem")
    code: str = Field(description="OpenAI-cookbook code, e.g. example_missing_assistant_message")
    message: str = Field(description="what is wrong, quoting at most a short excerpt of the line")


class ValidationReport(BaseModel):
    """What the line-by-line validation found; ``ok`` says whether the file can be trained on as is.

    Bounded whatever the file: ``errors`` keeps the first problems (the deployment's ``max_report_errors``),
    each message cut to 200 characters; ``error_counts`` counts them all and ``errors_omitted`` the rest.
    """

    ok: bool
    n_lines: int
    n_examples: int
    n_invalid: int
    formats: dict[str, int] = Field(default_factory=dict)
    errors: list[ValidationIssue] = Field(default_factory=list)
    error_counts: dict[str, int] = Field(default_factory=dict)
    errors_omitted: int = Field(default=0, description="problems counted in error_counts but not listed in errors")
    token_stats: dict[str, float] | None = None
    n_over_context: int = 0


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None = Field(default=None, description="when the file is deleted (`expires_after` on upload)")
    filename: str
    purpose: str
    status: Literal["processed", "error"]
    status_details: str | None = None
    sha256: str
    validation_report: ValidationReport | None = None


class FileList(ListPage):
    data: list[FileObject]
