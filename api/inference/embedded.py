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

A full copy (FFT, merged LoRA) is a whole model with an engine of its own, so the pool keeps at most
``inference_max_full_copy_engines`` of them loaded: loading one more closes the least recently used one that no
request is using (base models' engines stay). An engine is in use from the moment the router's getter hands
it out until the handler ends (``release``), and afterwards while the engine still has requests in flight
(a stream's), so closing it never fails a request.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
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

log = logging.getLogger(__name__)


class EnginePool:
    """One engine per registered base model or full copy, loaded on first use; the router's ``(request, model)``
    getter.

    Args:
        sessions: the app's session factory.
        storage: where registered adapters live.
        config: engine settings for every engine.
        only: serve just this base model (adapters of other base models answer 400).
        max_full_copies: full copies' engines kept loaded (``Settings.inference_max_full_copy_engines``).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        storage: LocalStorage,
        config: EngineConfig | None = None,
        *,
        only: str | None = None,
        max_full_copies: int = 2,
    ):
        self.sessions, self.storage, self.config, self.only = sessions, storage, config, only
        self.max_full_copies = max_full_copies
        self.engines: dict[str, Engine] = {}
        self.evictions = 0  # full copies' engines closed to load another (a Prometheus counter)
        self._full_copies: OrderedDict[str, None] = OrderedDict()  # loaded full copies, least recently used first
        self._full_copy_ids: frozenset[str] = frozenset()  # the same ids, for readers that take no lock
        self._users: Counter[Engine] = Counter()  # handlers holding each engine (``release`` ends a hold)
        self._users_lock = threading.Lock()  # never held across a model load, so ``release`` never waits on one
        self._adapters: dict[str, Adapter] = {}  # rows as last read by a request, for the engines' resolver
        self._checkpoints: dict[str, tuple[CheckpointModel, str]] = {}  # name -> (checkpoint, base model path)
        self._owners: dict[str, str] = {}  # adapter or checkpoint name -> project id, for scoping the cache views
        self._lock = threading.RLock()  # held while an engine loads or closes

    def __call__(self, request: Request, model: str | None) -> Engine | None:
        """The engine for ``model``, held until ``release``; with no model (the adapter listing) a loaded base
        model's engine, None before one loads."""
        if model is None:  # the listing: a base model's engine (a full copy's id and load belong to one project)
            with self._lock:
                bases = (engine for name, engine in self.engines.items() if name not in self._full_copies)
                return self._hold(next(bases, None))
        engine_id, path, full_copy = self._lookup(model, request.state.principal)
        with self._lock:
            return self._hold(self.engine(engine_id, path, full_copy=full_copy))

    def loaded(self, request: Request, model: str) -> Engine | None:
        """The engine serving ``model`` if it is loaded (held until ``release``), else None; never loads one.
        ``model`` is checked as for a chat: unknown or another project's -> 404."""
        engine_id, _, _ = self._lookup(model, request.state.principal)
        with self._lock:
            return self._hold(self.engines.get(engine_id))

    def _hold(self, engine: Engine | None) -> Engine | None:
        if engine is not None:
            with self._users_lock:
                self._users[engine] += 1
        return engine

    def release(self, engine: Engine) -> None:
        """The handler that got ``engine`` from the getter is done with it."""
        with self._users_lock:
            self._users[engine] -= 1
            if self._users[engine] <= 0:
                del self._users[engine]

    def _lookup(self, model: str, principal: Principal) -> tuple[str, str | Callable[[], str], bool]:
        """(engine id, model path, whether a full copy) for a base model, or an adapter or checkpoint of the
        caller's project (any project's adapter for an admin key): a full copy's engine id is its own."""
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
        if isinstance(found, Adapter) and registry.is_full_copy(found):
            # A model of its own, loaded on demand; its files are checked whenever it loads (``engine`` calls
            # this under the pool lock), so a copy evicted after this lookup is never reloaded unchecked.
            return found.id, lambda row=found: str(registry.verify(self.storage, row)), True
        if isinstance(found, Adapter):
            self._adapters[model] = found
            self._owners[model] = found.project_id
        elif found is not None:
            checkpoints.available(self.storage, found)
            self._checkpoints[model] = (found, base.path)
            self._owners[model] = principal.project_id
        return base.id, base.path, False

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

    def engine(self, base_id: str, path: str | Callable[[], str], *, full_copy: bool = False) -> Engine:
        """The engine of a base model or full copy, loading it once even under concurrent first requests
        (``path`` may be a function giving the checked path, called only when the engine loads).

        Raises:
            ServiceError: 503 ``engine_capacity``, a full copy to load while every loaded one is in use.
        """
        with self._lock:
            if base_id not in self.engines:
                checked = path() if callable(path) else path  # before evicting anything for it
                if full_copy:
                    self._make_room()
                self.engines[base_id] = Engine.from_pretrained(
                    checked, resolver=self._resolve, config=self.config, base_name=base_id
                )
            if full_copy:
                self._full_copies[base_id] = None
                self._full_copies.move_to_end(base_id)
                self._full_copy_ids = frozenset(self._full_copies)
            return self.engines[base_id]

    def full_copies(self) -> frozenset[str]:
        """Ids of the full copies whose engines are loaded (a snapshot: never waits for a load)."""
        return self._full_copy_ids

    def _make_room(self) -> None:
        """Close least recently used idle full copies until one more fits the limit (the pool lock is held)."""
        while len(self._full_copies) >= self.max_full_copies:
            idle = next((name for name in self._full_copies if self._idle(self.engines[name])), None)
            if idle is None:
                raise ServiceError(
                    503,
                    f"All {len(self._full_copies)} full-copy models this server keeps loaded are answering requests; "
                    "retry when one is done, or ask an admin to raise ESFT_INFERENCE_MAX_FULL_COPY_ENGINES.",
                    code="engine_capacity",
                )
            del self._full_copies[idle]
            self._full_copy_ids = frozenset(self._full_copies)
            self.engines.pop(idle).close()
            gc.collect()  # an engine is in reference cycles: free its model now, before the next one loads
            self.evictions += 1
            log.info("closed the idle engine of full copy %s", idle, extra={"event": "engine_evicted", "model": idle})

    def _idle(self, engine: Engine) -> bool:
        """No handler holds it and it has no request in flight (new holds need the pool lock, held here)."""
        with self._users_lock:
            held = self._users[engine] > 0
        return not held and engine.in_flight() == 0

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
        self._full_copies.clear()
        self._full_copy_ids = frozenset()


def mount_inference_pool(app: FastAPI, config: EngineConfig | None = None, *, only: str | None = None) -> EnginePool:
    """Serve registered base models and their adapters on ``app`` (built by ``create_app``) behind its API keys."""
    max_full_copies = app.state.settings.inference_max_full_copy_engines
    pool = EnginePool(app.state.session_factory, app.state.storage, config, only=only, max_full_copies=max_full_copies)
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
