"""API keys as the key routes show them: never the key itself, only its first characters."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from api.schemas.common import ListPage


class ApiKeyObject(BaseModel):
    id: str
    object: Literal["api_key"] = "api_key"
    name: str
    redacted_value: str  # the key's first characters, as OpenAI's admin API shows keys
    project_id: str
    project: str
    is_admin: bool
    created_at: int
    revoked_at: int | None = None
    limits: dict[str, Any] | None = None  # overrides of the deployment's rate limits for this key


class ApiKeyList(ListPage):
    data: list[ApiKeyObject]
