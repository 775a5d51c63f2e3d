"""Inference inside the service (``esft serve``): registered base models, registry adapters, API keys, and
adapters scoped to the caller's project; a job's checkpoint names (``...:ckpt-step-N``) serve as adapters too.

Each request does its bookkeeping once: the API key is checked by the router's dependency (which hands the
principal on in ``request.state.principal``), the adapter row is read once by ``EnginePool.__call__`` (which
checks the project and picks the base model's engine), and an adapter's files are hashed once on first load
(the registry checks the manifest, the library the weights).

``mount_inference_pool(app)`` serves every registered base model; the engine of a base model is loaded by
the first request that names it or one of its adapters (what ``esft serve`` uses, since base models are
registered while the server runs). ``mount_inference(app, model_id)`` serves one base model, loaded now.
Either way the engines close when the app shuts down.
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
from api.services import checkpoints, quotas, registry
from api.services.auth import Principal
from api.services.checkpoints import CheckpointModel
from esft.constants import ADAPTER_WEIGHTS_NAME
from esft.serving import Engine, EngineConfig


class EnginePool:
    """One engine per registered base model, loaded on first use; the router's ``(request, model)`` getter.

    Args:
        sessions: the app's session factory.
        storage: where registered adapters live.
        config: engine settings for every engine.
        only: serve just this base model (adapters of other base models answer 400).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        storage: LocalStorage,
        config: EngineConfig | None = None,
        *,
        only: str | None = None,
    ):
        self.sessions, self.storage, self.config, self.only = sessions, storage, config, only
        self.engines: dict[str, Engine] = {}
        self._adapters: dict[str, Adapter] = {}  # rows as last read by a request, for the engines' resolver
        self._checkpoints: dict[str, tuple[CheckpointModel, str]] = {}  # name -> (checkpoint, base model path)
        self._owners: dict[str, str] = {}  # adapter or checkpoint name -> project id, for scoping the cache views
        self._lock = threading.Lock()

    def __call__(self, request: Request, model: str | None) -> Engine:
        if model is None:
            if not self.engines:
                raise ServiceError(503, "No model has been served yet.", code="inference_idle")
            return next(iter(self.engines.values()))
        base_id, path = self._lookup(model, request.state.principal)
        return self.engine(base_id, path)

    def _lookup(self, model: str, principal: Principal) -> tuple[str, str]:
        """(base model id, its path) for a base model, or an adapter or checkpoint of the caller's project (any
        project's adapter for an admin key)."""
        with self.sessions() as session:
            found = self._find(session, model, principal)
            base = session.get(BaseModel, model if found is None else found.base_model)
        if base is None:
            raise not_found("model", model, param="model")
        if self.only is not None and base.id != self.only:
            raise ServiceError(
                400,
                f"Model {model!r} belongs to base model {base.id!r}; this server serves {self.only!r}.",
                code="adapter_base_mismatch",
                param="model",
            )
        if isinstance(found, Adapter):
            self._adapters[model] = found
            self._owners[model] = found.project_id
        elif found is not None:
            checkpoints.available(self.storage, found)
            self._checkpoints[model] = (found, base.path)
            self._owners[model] = principal.project_id
        return base.id, base.path

    @staticmethod
    def _find(session: Session, model: str, principal: Principal) -> Adapter | CheckpointModel | None:
        """The adapter or checkpoint ``model`` names (one read of its row), None for a base model's name."""
        if checkpoints.is_checkpoint_name(model):
            return checkpoints.find(session, principal.project_id, model)  # 404 for another project's, as adapters
        adapter = session.get(Adapter, model)
        if adapter is not None and adapter.project_id != principal.project_id and not principal.is_admin:
            raise not_found("model", model, param="model")  # as /v1/models/{id}: existence never leaks
        return adapter

    def visible(self, request: Request, stats: dict) -> dict:
        """An engine's ``stats`` as the caller may see them: an admin every adapter, others their project's only."""
        principal = request.state.principal
        if principal.is_admin:
            return stats
        mine = {name for name, project in self._owners.items() if project == principal.project_id}
        cache = stats["cache"]
        scoped = {**stats, "cache": {**cache, "adapters": [a for a in cache["adapters"] if a["name"] in mine]}}
        if stats.get("slots"):
            scoped["slots"] = {**stats["slots"], "resident": [n for n in stats["slots"]["resident"] if n in mine]}
        return scoped

    def check_pin(self, request: Request, engine: Engine, name: str) -> None:
        """Pinning ``name`` keeps the caller's project within its pinned-bytes quota (admins pin freely)."""
        principal = request.state.principal
        if principal.is_admin:
            return
        adding = engine.load_adapter(name)
        pinned = sum(
            entry.nbytes
            for pool_engine in list(self.engines.values())
            for entry in pool_engine.cache.entries()
            if entry.pinned and entry.name != name and self._owners.get(entry.name) == principal.project_id
        )
        quotas.check_pinned(request.app.state.settings, principal, pinned, 0 if adding.pinned else adding.nbytes)

    def engine(self, base_id: str, path: str) -> Engine:
        """The engine of a base model, loading it once even under concurrent first requests."""
        with self._lock:
            if base_id not in self.engines:
                self.engines[base_id] = Engine.from_pretrained(
                    path, resolver=self._resolve, config=self.config, base_name=base_id
                )
            return self.engines[base_id]

    def _resolve(self, name: str) -> Path | None:
        """Adapter id -> its verified folder, from the row the request already read (no second read).

        The weights are left to ``ESFTAdapter.from_pretrained``, which checks them against the sha256 in
        ``adapter_config.json``; that config is checked here against the manifest, so each file is hashed once.
        A checkpoint name -> its adapter folder, converted on first use (``api.services.checkpoints``).
        """
        if name in self._checkpoints:
            ckpt, model_dir = self._checkpoints[name]
            return checkpoints.adapter_dir(self.storage, ckpt, model_dir)
        row = self._adapters.get(name)
        return None if row is None else registry.verify(self.storage, row, skip=(ADAPTER_WEIGHTS_NAME,))

    def problem(self) -> str | None:
        """Why inference cannot serve (an engine whose scheduler stopped), for ``/health/ready``."""
        dead = sorted(base for base, engine in self.engines.items() if not engine.health()["alive"])
        return f"The inference engine of {', '.join(dead)} stopped; restart the server." if dead else None

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()
        self.engines.clear()


def mount_inference_pool(app: FastAPI, config: EngineConfig | None = None, *, only: str | None = None) -> EnginePool:
    """Serve registered base models and their adapters on ``app`` (built by ``create_app``) behind its API keys."""
    pool = EnginePool(app.state.session_factory, app.state.storage, config, only=only)
    app.state.inference_pool = pool
    app.state.shutdown_hooks.append(pool.close)
    app.state.readiness_checks.append(pool.problem)
    app.include_router(create_inference_router(pool, dependencies=[Depends(get_principal)]))
    return pool


def mount_inference(app: FastAPI, model_id: str, config: EngineConfig | None = None) -> Engine:
    """Serve the registered base model ``model_id`` (loaded now) and its adapters on ``app``."""
    with app.state.session_factory() as session:
        base = session.get(BaseModel, model_id)
        if base is None:
            raise ServiceError(404, f"No base model {model_id!r} is registered.", code="model_not_found")
        path = base.path
    pool = mount_inference_pool(app, config, only=model_id)
    engine = pool.engine(model_id, path)
    app.state.inference_engine = engine
    return engine
