"""The inference router: OpenAI-compatible chat and text completions over an ``esft.serving.Engine``,
plus adapter load/unload/pin. ``model`` names the base model or an adapter (as in vLLM and LoRAX).

The engine is found per request from the request and the ``model`` it names
(``request.app.state.inference_engine`` by default), so the router can be built before any engine is
loaded and a service can keep one engine per base model. The getter may refuse a model (raise a
``ServiceError``), which is how the embedding service hides adapters of another project.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.core.errors import ServiceError
from api.inference.bridge import AsyncRequest, call
from api.inference.schemas import (
    AdapterPin,
    AdapterState,
    ChatCompletion,
    ChatCompletionRequest,
    CompletionRequest,
    EngineState,
    TextCompletion,
)
from api.inference.sse import ResponseMeta, chat_chunks, text_chunks
from api.schemas.common import error_responses
from esft.serving import CachedAdapter, Engine, GenerationRequest, SamplingParams

EngineGetter = Callable[[Request, str | None], Engine]

ERRORS = error_responses(400, 404, 409, 422, 503)
_SSE = {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "with `stream: true`"}


def _default_engine(request: Request, model: str | None = None) -> Engine:
    engine = getattr(request.app.state, "inference_engine", None)
    if engine is None:
        raise ServiceError(503, "Inference is not enabled on this server.", code="inference_disabled")
    return engine


def _sampling(body: ChatCompletionRequest | CompletionRequest) -> SamplingParams:
    return SamplingParams(
        max_tokens=body.token_limit,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_strings(),
        seed=body.seed,
        ignore_eos=body.ignore_eos,
    )


def _adapter_state(entry: CachedAdapter) -> AdapterState:
    return AdapterState(
        id=entry.name, loaded=True, pinned=entry.pinned, bytes=entry.nbytes, load_ms=round(entry.load_ms, 3)
    )


class InferenceRoutes:
    """The route handlers, bound to one way of finding (and refusing) the engine for a model."""

    def __init__(self, engine: Engine | EngineGetter | None):
        fixed = isinstance(engine, Engine)
        self.engine: EngineGetter = (lambda _r, _m: engine) if fixed else (engine or _default_engine)

    async def _allowed(self, request: Request, model: str) -> Engine:
        return await run_in_threadpool(self.engine, request, model)

    async def _submit(self, engine: Engine, body, prompt_ids: list[int], prefix: str):
        adapter = None if engine.is_base(body.model) else body.model
        pending = await AsyncRequest.submit(engine, GenerationRequest(prompt_ids, adapter, _sampling(body)))
        return pending, ResponseMeta(body.model, len(prompt_ids), prefix)

    async def chat(self, body: ChatCompletionRequest, request: Request):
        engine = await self._allowed(request, body.model)
        ids = await call(engine.encode, [m.as_dict() for m in body.messages])
        pending, meta = await self._submit(engine, body, ids, "chatcmpl")
        if body.stream:
            return StreamingResponse(chat_chunks(pending, meta, body.include_usage), media_type="text/event-stream")
        done = await pending.result()
        return ChatCompletion(
            id=meta.id,
            created=meta.created,
            model=meta.model,
            usage=meta.usage(done),
            choices=[{"message": {"content": done.text}, "finish_reason": done.finish_reason}],
        )

    async def complete(self, body: CompletionRequest, request: Request):
        engine = await self._allowed(request, body.model)
        ids = await call(_prompt_ids, engine, body.prompt)
        pending, meta = await self._submit(engine, body, ids, "cmpl")
        if body.stream:
            return StreamingResponse(text_chunks(pending, meta, body.include_usage), media_type="text/event-stream")
        done = await pending.result()
        return TextCompletion(
            id=meta.id,
            created=meta.created,
            model=meta.model,
            usage=meta.usage(done),
            choices=[{"text": done.text, "finish_reason": done.finish_reason}],
        )

    async def list_adapters(self, request: Request) -> EngineState:
        return EngineState(data=await call((await run_in_threadpool(self.engine, request, None)).stats))

    async def load(self, name: str, request: Request) -> AdapterState:
        engine = await self._allowed(request, name)
        return _adapter_state(await call(engine.load_adapter, name))

    async def unload(self, name: str, request: Request) -> AdapterState:
        engine = await self._allowed(request, name)
        await call(engine.unload_adapter, name)
        return AdapterState(id=name, loaded=False)

    async def pin(self, name: str, request: Request, body: AdapterPin | None = None) -> AdapterState:
        engine = await self._allowed(request, name)
        return _adapter_state(await call(engine.pin_adapter, name, True if body is None else body.pinned))

    async def unpin(self, name: str, request: Request) -> AdapterState:
        engine = await self._allowed(request, name)
        return _adapter_state(await call(engine.pin_adapter, name, False))


def create_inference_router(
    engine: Engine | EngineGetter | None = None,
    *,
    dependencies: Sequence[Any] = (),
) -> APIRouter:
    """Build the router.

    Args:
        engine: the engine, or ``(request, model) -> engine`` (default: ``request.app.state.inference_engine``);
            ``model`` is None for requests that name no model. The getter runs in the thread pool and may
            raise a ``ServiceError`` to refuse the model.
        dependencies: route dependencies, e.g. ``[Depends(get_principal)]`` to require an API key.
    """
    routes = InferenceRoutes(engine)
    router = APIRouter(tags=["inference"], dependencies=list(dependencies), responses=ERRORS)
    post = functools.partial(router.add_api_route, methods=["POST"])
    post(
        "/v1/chat/completions",
        routes.chat,
        name="create_chat_completion",
        response_model=ChatCompletion,
        responses={200: _SSE},
    )
    post(
        "/v1/completions",
        routes.complete,
        name="create_completion",
        response_model=TextCompletion,
        responses={200: _SSE},
    )
    router.add_api_route(
        "/v1/adapters", routes.list_adapters, methods=["GET"], name="list_adapters", response_model=EngineState
    )
    for action in ("load", "unload", "pin", "unpin"):
        post(
            f"/v1/adapters/{{name}}/{action}",
            getattr(routes, action),
            name=f"{action}_adapter",
            response_model=AdapterState,
        )
    return router


def _prompt_ids(engine: Engine, prompt: str | list[str] | list[int]) -> list[int]:
    """Token ids of a ``/v1/completions`` prompt: raw text (no chat template) or ids as given."""
    if isinstance(prompt, list) and isinstance(prompt[0], int):
        vocab = engine.model.config.vocab_size
        if any(not 0 <= token < vocab for token in prompt):
            raise ServiceError(400, f"Token ids must be in [0, {vocab}).", code="invalid_prompt", param="prompt")
        return list(prompt)
    return engine.encode(prompt if isinstance(prompt, str) else prompt[0], chat=False)
