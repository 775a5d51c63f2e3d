"""``/v1/keys``: list and revoke API keys; an admin key sees every project's, other keys their project's."""

from __future__ import annotations

from fastapi import APIRouter

from api.core.db.models import Project
from api.deps import PrincipalDep, SessionDep
from api.schemas.common import COMMON_ERRORS
from api.schemas.keys import ApiKeyList, ApiKeyObject
from api.services import auth

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=COMMON_ERRORS)


def _scope(principal: auth.Principal) -> str | None:
    return None if principal.is_admin else principal.project_id


@router.get("", name="list", response_model=ApiKeyList)
def list_(principal: PrincipalDep, session: SessionDep) -> ApiKeyList:
    return ApiKeyList.of([auth.to_public(key, project) for key, project in auth.list_keys(session, _scope(principal))])


@router.post("/{key_id}/revoke", name="revoke", response_model=ApiKeyObject)
def revoke(principal: PrincipalDep, session: SessionDep, key_id: str) -> ApiKeyObject:
    """Revoke a key now: its next request is a 401. Takes the key's id or its shown prefix."""
    key = auth.revoke_key(session, auth.find_key(session, key_id, _scope(principal)))
    session.commit()
    return auth.to_public(key, session.get(Project, key.project_id).name)
