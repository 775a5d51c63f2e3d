"""Inference inside the service (``esft serve``): the model registry as the adapter resolver, API keys,
and adapters scoped to the caller's project.

``mount_inference(app, model_id)`` loads the registered base model ``model_id``, puts the engine on
``app.state.inference_engine`` and mounts the inference router behind the service's API keys. The
caller closes the engine on shutdown (``engine.close()`` in the app's lifespan).

``mount_inference_pool(app)`` serves every registered base model instead: the engine of a base model is
loaded by the first request that names it or one of its adapters (what ``esft serve`` uses, since base
models are registered while the server runs).
"""

from __future__ import annotations

import threading
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from sqlalchemy.orm import Session, sessionmaker

from api.core.db.models import Adapter, BaseModel
from api.core.errors import ServiceError, not_found
from api.core.storage import LocalStorage
from api.deps import get_principal
from api.inference.routes import create_inference_router
from api.services import registry
from api.services.auth import authenticate
from esft.serving import Engine, EngineConfig, Resolver


def registry_resolver(sessions: sessionmaker[Session], storage: LocalStorage, base_model: str) -> Resolver:
    """Adapter id -> its verified folder in storage (``None`` when no such adapter is registered).

    Raises:
        ServiceError: 400 when the adapter was trained on another base model; 500 when its files fail
            the integrity check.
    """

    def resolve(name: str) -> Path | None:
        with sessions() as session:
            row = session.get(Adapter, name)
            if row is None:
                return None
            if row.base_model != base_model:
                raise ServiceError(
                    400,
                    f"Adapter {name!r} was trained on base model {row.base_model!r}; this server serves "
                    f"{base_model!r}.",
                    code="adapter_base_mismatch",
                    param="model",
                )
            return registry.verify(storage, row)

    return resolve


def project_access(request: Request, model: str) -> None:
    """Refuse (404, as ``/v1/models/{id}`` does) adapters that belong to another project."""
    with request.app.state.session_factory() as session:
        principal = authenticate(session, request.headers.get("authorization"))
        row = session.get(Adapter, model)
        if row is not None and row.project_id != principal.project_id:
            raise not_found("model", model, param="model")


def mount_inference(app: FastAPI, model_id: str, config: EngineConfig | None = None) -> Engine:
    """Serve the registered base model ``model_id`` and its adapters on ``app`` (built by ``create_app``)."""
    sessions: sessionmaker[Session] = app.state.session_factory
    with sessions() as session:
        base = session.get(BaseModel, model_id)
        if base is None:
            raise ServiceError(404, f"No base model {model_id!r} is registered.", code="model_not_found")
        path = base.path
    resolver = registry_resolver(sessions, app.state.storage, model_id)
    engine = Engine.from_pretrained(path, resolver=resolver, config=config, base_name=model_id)
    app.state.inference_engine = engine
    app.include_router(create_inference_router(dependencies=[Depends(get_principal)], model_access=project_access))
    return engine


class EnginePool:
    """One engine per registered base model, loaded on first use; the router's ``(request, model)`` getter."""

    def __init__(self, sessions: sessionmaker[Session], storage: LocalStorage, config: EngineConfig | None = None):
        self.sessions, self.storage, self.config = sessions, storage, config
        self.engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def _base_of(self, model: str) -> tuple[str, str]:
        """(base model id, its path) for a base model id or an adapter id; 404 for anything else."""
        with self.sessions() as session:
            adapter = session.get(Adapter, model)
            base = session.get(BaseModel, adapter.base_model if adapter is not None else model)
            if base is None:
                raise not_found("model", model, param="model")
            return base.id, base.path

    def __call__(self, _request: Request, model: str | None) -> Engine:
        if model is None:
            if not self.engines:
                raise ServiceError(503, "No model has been served yet.", code="inference_idle")
            return next(iter(self.engines.values()))
        base_id, path = self._base_of(model)
        with self._lock:  # one load per base model, even under concurrent first requests
            if base_id not in self.engines:
                resolver = registry_resolver(self.sessions, self.storage, base_id)
                self.engines[base_id] = Engine.from_pretrained(
                    path, resolver=resolver, config=self.config, base_name=base_id
                )
            return self.engines[base_id]

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()


def mount_inference_pool(app: FastAPI, config: EngineConfig | None = None) -> EnginePool:
    """Serve every registered base model and its adapters on ``app``, loading each on first request."""
    pool = EnginePool(app.state.session_factory, app.state.storage, config)
    app.state.inference_pool = pool
    router = create_inference_router(pool, dependencies=[Depends(get_principal)], model_access=project_access)
    app.include_router(router)
    return pool
