"""The FastAPI application: routers, error envelope, size limits, stable operation ids and the OpenAPI tweaks.

Run with ``uvicorn --factory api.main:create_app`` (or ``esft serve`` for API + worker in one command).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from api.core.db.session import session_factory
from api.core.queue import CeleryQueue, Queue
from api.core.ratelimit import buckets_for
from api.core.settings import Settings
from api.core.storage import LocalStorage
from api.deps import get_principal
from api.errors import CatchAllMiddleware, install_error_handlers
from api.inference.operations import TAG as INFERENCE_TAG
from api.inference.operations import DocumentOnly, inference_router
from api.input_checks import check_request_input
from api.limits import BodyLimitMiddleware
from api.metrics import mount_metrics
from api.observe import ObserveMiddleware
from api.routes import admin, files, health, jobs, keys, models

TAGS = [
    {"name": "files", "description": "Datasets (JSONL) and their validation reports."},
    {"name": "fine_tuning", "description": "ESFT jobs, their events, checkpoints and artifacts."},
    {"name": "models", "description": "Base models and trained ESFT adapters."},
    {"name": "keys", "description": "API keys: list and revoke (admin keys: every project)."},
    {"name": "admin", "description": "Operator actions (admin key)."},
    {"name": "health", "description": "Probes; no API key needed."},
    INFERENCE_TAG,
]


def operation_id(route: APIRoute) -> str:
    """Stable ids from tag and route name, e.g. ``fine_tuning_create_job`` (not path-derived)."""
    return f"{route.tags[0]}_{route.name}" if route.tags else route.name


def _binary_file_fields(schema: dict[str, Any]) -> None:
    """Mark upload fields ``format: binary`` so generated clients send files, not strings."""
    for component in schema.get("components", {}).get("schemas", {}).values():
        for prop in component.get("properties", {}).values():
            if prop.get("contentMediaType") == "application/octet-stream":
                prop.pop("contentMediaType")
                prop["format"] = "binary"


def _no_422(schema: dict[str, Any]) -> None:
    """FastAPI documents a 422 on every route with parameters; this service answers those errors with 400."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schema.get("components", {}).get("schemas", {}).pop(name, None)


def _documented_routes(app: FastAPI) -> list:
    """The app's routes, with the inference operations declared whether or not an engine is mounted."""
    declared = inference_router(DocumentOnly(), [Depends(get_principal)], operation_id).routes
    return [r for r in app.routes if "inference" not in getattr(r, "tags", ())] + declared


def _custom_openapi(app: FastAPI):
    def build() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=_documented_routes(app),
                tags=TAGS,
            )
            _binary_file_fields(schema)
            _no_422(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    return build


def create_app(settings: Settings | None = None, *, queue: Queue | None = None, migrate: bool | None = None) -> FastAPI:
    """Build the app; ``queue`` defaults to Celery ``send_task`` on the configured broker.

    Whatever is mounted later and must be released at shutdown (inference engines) appends its close
    function to ``app.state.shutdown_hooks``; the lifespan calls them in reverse order. What must work for
    the app to be ready appends a check to ``app.state.readiness_checks`` (``/health/ready``).
    """
    settings = settings or Settings()
    migrate = settings.auto_migrate if migrate is None else migrate

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if migrate:
            from api.core.migrate import upgrade

            upgrade(settings.database_url)
        app.state.storage.sweep_tmp()  # what uploads and downloads of a killed server left behind
        yield
        for close in reversed(app.state.shutdown_hooks):  # e.g. the inference engines mounted on this app
            close()

    app = FastAPI(
        title="ESFT fine-tuning service",
        version="1.0.0",
        lifespan=lifespan,
        description="OpenAI-style fine-tuning API for Expert-Specialized Fine-Tuning of MoE models.",
        generate_unique_id_function=operation_id,
        openapi_tags=TAGS,
        dependencies=[Depends(check_request_input)],  # every route, inference included: NUL, NaN, surrogates
    )
    app.state.settings = settings
    app.state.session_factory = session_factory(settings.database_url, **settings.db_pool())
    app.state.storage = LocalStorage(settings.storage_dir)
    app.state.queue = queue or CeleryQueue(settings)
    app.state.rate_buckets = buckets_for(settings.shared_redis_url)
    app.state.shutdown_hooks = []
    app.state.readiness_checks = []  # () -> None or why the app is not ready (a dead inference engine)
    for module in (files, jobs, models, keys, admin, health):
        app.include_router(module.router)
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_upload_bytes=settings.max_upload_bytes,
        max_json_bytes=settings.max_json_bytes,
        upload_paths=("/v1/files",),
    )
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(ObserveMiddleware)  # outermost: every response gets its request id, logged and timed
    mount_metrics(app, app.state.session_factory)
    app.openapi = _custom_openapi(app)
    return app
