"""Rate limits and quotas per project and per key: requests/s, devices held by unfinished jobs, stored bytes and
pinned adapter bytes.

Each limit has a deployment default (``Settings.default_limits``) and optional overrides stored on the project
and the key (``esft limits set``); 0 turns a limit off. Going over a limit is a 429 naming it and how to raise
it; a single request larger than the limit on its own is a 400 (waiting would not help).
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.core.db.models import Adapter, File, Job
from api.core.errors import ServiceError
from api.core.ratelimit import Buckets
from api.core.runs import INACTIVE
from api.core.settings import Settings
from api.services.auth import Principal

_RAISE = "ask an admin to raise it (`esft limits set --project {project} {name}=N`)"


def check_rate(buckets: Buckets, settings: Settings, principal: Principal) -> None:
    """Take a token from the key's bucket, or answer 429 with ``Retry-After`` (OpenAI's ``rate_limit_exceeded``)."""
    defaults = settings.default_limits()
    rate = principal.limit(defaults, "requests_per_second")
    if rate <= 0:
        return
    burst = max(1.0, principal.limit(defaults, "burst"))
    wait = buckets.take(principal.key_id, rate, burst)
    if wait > 0:
        retry = max(1, math.ceil(wait))
        raise ServiceError(
            429,
            f"Rate limit reached for requests: {rate:g} requests/s per API key (burst {burst:g}). "
            f"Retry after {retry} s, or ask an admin to raise it "
            f"(`esft limits set --key {principal.key_id} requests_per_second=N burst=N`).",
            code="rate_limit_exceeded",
            type="requests",
            headers={"Retry-After": str(retry)},
        )


def _n(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:g}"


def _check(principal: Principal, settings: Settings, name: str, used: float, adding: float, what: str) -> None:
    quota = principal.limit(settings.default_limits(), name)
    if quota <= 0 or used + adding <= quota:
        return
    how = _RAISE.format(project=principal.project_id, name=name)
    if adding > quota:
        raise ServiceError(
            400, f"{what} ({_n(adding)}) is over the project's {name} quota of {_n(quota)} on its own; {how}.",
            code="quota_exceeded",
        )  # fmt: skip
    raise ServiceError(
        429, f"Quota {name} exceeded: the project uses {_n(used)} of {_n(quota)} and {what} needs {_n(adding)} "
        f"more; wait for jobs to finish, unpin adapters or delete files or models, or {how}.",
        code="quota_exceeded", type="insufficient_quota",
    )  # fmt: skip


def devices_of(spec: Any) -> int:
    """Devices a job holds: its ``resources.gpus`` when it asks for several, else 1 (a job row or a request body)."""
    resources = getattr(spec, "resources", None)
    gpus = resources.get("gpus") if isinstance(resources, dict) else getattr(resources, "gpus", None)
    return int(gpus) if isinstance(gpus, int) and gpus > 0 else 1


def devices_in_use(session: Session, project_id: str) -> int:
    jobs = session.scalars(select(Job).where(Job.project_id == project_id, Job.status.not_in(INACTIVE)))
    return sum(devices_of(job) for job in jobs)


def check_devices(session: Session, settings: Settings, principal: Principal, devices: int) -> None:
    """Before a job is created or resumed: the project's unfinished jobs plus this one fit its device quota."""
    used = devices_in_use(session, principal.project_id)
    _check(principal, settings, "concurrent_devices", used, devices, "this job")


def stored_bytes(session: Session, project_id: str) -> int:
    """Bytes of the project's files and models (adapters and full-copy models are rows of ``adapters``)."""
    files = session.scalar(select(func.coalesce(func.sum(File.bytes), 0)).where(File.project_id == project_id))
    models = session.scalar(select(func.coalesce(func.sum(Adapter.bytes), 0)).where(Adapter.project_id == project_id))
    return int(files) + int(models)


def check_storage(
    session: Session, settings: Settings, principal: Principal, adding: int, *, stored: bool, what: str = "this upload"
) -> None:
    """``adding`` bytes fit the project's stored-bytes quota (``stored``: they are already counted in the total).

    A job's model is not known before it is trained: a job may start while the project has room left.
    """
    used = stored_bytes(session, principal.project_id) - (adding if stored else 0)
    _check(principal, settings, "stored_bytes", used, adding, what)


def check_pinned(settings: Settings, principal: Principal, pinned: int, adding: int) -> None:
    """Pinning ``adding`` bytes more keeps the project's pinned adapters within its quota."""
    _check(principal, settings, "pinned_bytes", pinned, adding, "this adapter")
