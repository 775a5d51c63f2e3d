"""The inference operations (paths, names, bodies, responses), declared once and torch-free.

``add_inference_routes(router, handlers)`` registers them with real handlers (``api.inference.routes``,
which needs torch) or with ``DocumentOnly`` handlers that have the same signatures, so the service's
OpenAPI document (``api.main``) describes the inference routes without loading an engine. A test checks
that both give the same operations.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.routing import APIRoute

from api.schemas.common import error_responses
from api.schemas.inference import AdapterPin, ChatCompletionRequest, CompletionRequest
from api.schemas.inference_objects import AdapterState, ChatCompletion, EngineState, TextCompletion

TAG = {"name": "inference", "description": "OpenAI-compatible chat and text completions over base models and adapters."}
ERRORS = error_responses(400, 401, 404, 409, 429, 503)


def _stream_of(event: str) -> dict[int | str, dict[str, Any]]:
    """A 200 that is JSON, or with ``stream: true`` server-sent events of ``event`` objects."""
    sse = {"schema": {"type": "string", "description": f"`data: <{event} JSON>` events, then `data: [DONE]`"}}
    return {200: {"content": {"text/event-stream": sse}, "description": f"JSON, or {event} events with `stream: true`"}}


LISTED_MODEL = Query(
    None, description="show the engine serving this base model, adapter or full copy (default: a base model's); "
    "never loads one: an engine not loaded yet shows the idle state",
)


def add_inference_routes(router: APIRouter, handlers: Any) -> APIRouter:
    """Register chat and text completions and the adapter admin routes on ``router``."""
    post = functools.partial(router.add_api_route, methods=["POST"])
    post(
        "/v1/chat/completions",
        handlers.chat,
        name="create_chat_completion",
        response_model=ChatCompletion,
        responses=_stream_of("ChatCompletionChunk"),
    )
    post(
        "/v1/completions",
        handlers.complete,
        name="create_completion",
        response_model=TextCompletion,
        responses=_stream_of("TextCompletion"),
    )
    router.add_api_route(
        "/v1/adapters", handlers.list_adapters, methods=["GET"], name="list_adapters", response_model=EngineState
    )
    for action in ("load", "unload", "pin", "unpin"):
        post(
            f"/v1/adapters/{{name}}/{action}",
            getattr(handlers, action),
            name=f"{action}_adapter",
            response_model=AdapterState,
        )
    return router


def inference_router(
    handlers: Any, dependencies: Sequence[Any] = (), operation_id: Callable[[APIRoute], str] | None = None
) -> APIRouter:
    """The inference router over ``handlers``, tagged ``inference``, with the error envelope documented.

    ``operation_id`` names operations when the router is not mounted on an app that names them (the document).
    """
    ids = {} if operation_id is None else {"generate_unique_id_function": operation_id}
    router = APIRouter(tags=["inference"], dependencies=list(dependencies), responses=ERRORS, **ids)
    return add_inference_routes(router, handlers)


class DocumentOnly:
    """Handlers with the real ones' signatures, for the OpenAPI document only (never mounted)."""

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Any:
        raise NotImplementedError

    async def complete(self, body: CompletionRequest, request: Request) -> Any:
        raise NotImplementedError

    async def list_adapters(self, request: Request, model: str | None = LISTED_MODEL) -> Any:
        raise NotImplementedError

    async def load(self, name: str, request: Request) -> Any:
        raise NotImplementedError

    async def unload(self, name: str, request: Request) -> Any:
        raise NotImplementedError

    async def pin(self, name: str, request: Request, body: AdapterPin | None = None) -> Any:
        raise NotImplementedError

    async def unpin(self, name: str, request: Request) -> Any:
        raise NotImplementedError
