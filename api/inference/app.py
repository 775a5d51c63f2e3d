"""A standalone inference server (no database): one base model directory and adapters by name.

``create_inference_app("models/toy", {"math": "out/adapter"})`` serves ``/v1/chat/completions``,
``/v1/completions``, ``/v1/models`` and the adapter routes; ``esft serve`` mounts the same router next
to the registry instead.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI
from pydantic import BaseModel

from api.errors import CatchAllMiddleware, install_error_handlers
from api.inference.routes import create_inference_router
from api.input_checks import check_request_input
from api.metrics import mount_metrics
from api.observe import ObserveMiddleware
from esft.serving import Engine, EngineConfig, Resolver, dict_resolver


class ServedModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "esft"
    parent: str | None = None
    root: str | None = None


class ServedModels(BaseModel):
    object: Literal["list"] = "list"
    data: list[ServedModel]
    has_more: bool = False


def create_inference_app(
    base_model_dir: str | Path | None = None,
    adapters: Mapping[str, str | Path] | Resolver | None = None,
    *,
    config: EngineConfig | None = None,
    base_name: str | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """Build the app; the engine (model load) is built now and its scheduler starts on first use.

    Args:
        base_model_dir: the base model (``save_pretrained`` layout); ignored when ``engine`` is given.
        adapters: ``name -> adapter directory``, or a resolver callable.
        config: engine settings (budgets, batching mode).
        base_name: the ``model`` name of the base model (default: the directory name).
        engine: an engine built elsewhere (tests, benchmarks).
    """
    known = dict(adapters) if isinstance(adapters, Mapping) else {}
    resolver = dict_resolver(known) if isinstance(adapters, Mapping) else adapters
    if engine is None:
        if base_model_dir is None:
            raise ValueError("pass `base_model_dir` or `engine`")
        engine = Engine.from_pretrained(base_model_dir, resolver=resolver, config=config, base_name=base_name)

    app = FastAPI(
        title="ESFT inference",
        version="1.0.0",
        lifespan=functools.partial(_lifespan, engine),
        description="OpenAI-compatible completions over a base MoE model and its ESFT adapters.",
        generate_unique_id_function=lambda route: f"{route.tags[0]}_{route.name}",  # as api.main names them
        dependencies=[Depends(check_request_input)],  # NUL, NaN, surrogates: 400 before any route, as api.main
    )
    app.state.inference_engine = engine
    app.include_router(create_inference_router())
    app.add_api_route(
        "/v1/models",
        functools.partial(_list_models, engine, known),
        methods=["GET"],
        tags=["models"],
        name="list_models",
        response_model=ServedModels,
    )
    install_error_handlers(app)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(ObserveMiddleware)
    mount_metrics(app)
    return app


@asynccontextmanager
async def _lifespan(engine: Engine, _: FastAPI):
    """Start the engine's scheduler with the server; on shutdown fail what is left and restore the weights."""
    engine.start()
    yield
    engine.close()


def _list_models(engine: Engine, known: Mapping[str, Path]) -> ServedModels:
    """The base model and the adapters this server knows (configured or loaded)."""
    names = sorted(set(known) | {entry.name for entry in engine.cache.entries()})
    data = [ServedModel(id=engine.base_name)]
    data += [ServedModel(id=name, parent=engine.base_name, root=engine.base_name) for name in names]
    return ServedModels(data=data)
