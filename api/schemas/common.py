"""Shapes shared by every resource: strict request base, list page, error envelope, deletion receipts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class StrictRequest(BaseModel):
    """Request bodies: no coercion (``"top_p": false`` is an error) and no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ListPage(BaseModel):
    """OpenAI's list page: ``data`` plus ``has_more`` and the ids of its first and last items."""

    object: Literal["list"] = "list"
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def of(cls, data: list, has_more: bool = False, key: str = "id"):
        """A page of ``data``; ``key`` is the items' identifying field (``name`` for artifacts)."""
        ids = [getattr(item, key) for item in data]
        return cls(data=data, has_more=has_more, first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The OpenAI error envelope every failure uses."""

    error: ErrorDetail


class DeletedObject(BaseModel):
    id: str
    object: str
    deleted: bool


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` entries documenting the error envelope for the given statuses."""
    return {status: {"model": ErrorResponse, "description": "Error"} for status in statuses}


COMMON_ERRORS = error_responses(400, 401, 404, 429)  # 429: rate limits and quotas
BINARY = {"type": "string", "format": "binary"}


def binary_response(description: str) -> dict[int | str, dict]:
    """A 200 that is a download (generated clients then hand back bytes)."""
    return {200: {"description": description, "content": {"application/octet-stream": {"schema": BINARY}}}}
