"""The inference handlers: OpenAI-compatible chat and text completions over an ``esft.serving.Engine``, plus
adapter load/unload/pin. ``model`` names the base model or an adapter (as in vLLM and LoRAX). The operations
themselves (paths, bodies, responses) are declared in ``api.inference.operations``.

The engine is found per request from the request and the ``model`` it names
(``request.app.state.inference_engine`` by default), so the router can be built before any engine is
loaded and a service can keep one engine per base model. The getter may refuse a model (raise a
``ServiceError``), which is how the embedding service hides adapters of another project. A getter with a
``release(engine)`` method (the service's pool) is told when each handler is done with the engine it handed out.

A request with ``n`` choices is ``n`` engine requests (choice ``i`` of a seeded request uses ``seed + i``);
they are decoded in the same batches. Each has the deployment's deadline (``inference_request_timeout_s``),
and a client that disconnects cancels its choices, streamed or not, so their batch places free at once.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.core.errors import ServiceError
from api.inference.bridge import AsyncRequest, call
from api.inference.objects import ResponseMeta, TokenTexts, chat_completion, text_completion
from api.inference.operations import LISTED_MODEL, inference_router
from api.inference.sse import chat_chunks, text_chunks
from api.schemas.inference import AdapterPin, ChatCompletionRequest, CompletionRequest
from api.schemas.inference_objects import AdapterState, EngineState
from esft.serving import CachedAdapter, Engine, GenerationRequest, SamplingParams

EngineGetter = Callable[[Request, str | None], Engine | None]
Body = ChatCompletionRequest | CompletionRequest
DISCONNECT_POLL_S = 0.1
"""How often a non-streaming request checks that its client is still connected while it waits."""
IDLE_STATE: dict[str, Any] = {"base_model": None, "running": 0, "waiting": 0, "cache": {"adapters": []}, "slots": None}
"""``GET /v1/adapters`` before any engine is loaded: nothing cached, nothing queued."""


def _default_engine(request: Request, model: str | None = None) -> Engine:
    engine = getattr(request.app.state, "inference_engine", None)
    if engine is None:
        raise ServiceError(503, "Inference is not enabled on this server.", code="inference_disabled")
    return engine


def _sampling(body: Body, choice: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=body.token_limit,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_strings(),
        seed=None if body.seed is None else (body.seed + choice) % 2**63,
        ignore_eos=body.ignore_eos,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=body.bias_pairs(),
        logprobs=body.logprobs_k,
        json_schema=body.schema_text(),
    )


def _adapter_state(entry: CachedAdapter) -> AdapterState:
    return AdapterState(
        id=entry.name, loaded=True, pinned=entry.pinned, bytes=entry.nbytes, load_ms=round(entry.load_ms, 3)
    )


def _fingerprint(engine: Engine, model: str) -> str:
    """``system_fingerprint``: the base model, and the adapter's weights revision (sha256 prefix)."""
    if engine.is_base(model):
        return f"fp_{engine.base_name}"
    return f"fp_{engine.base_name}+{engine.cache.get(model).fingerprint_part}"


class InferenceRoutes:
    """The route handlers, bound to one way of finding (and refusing) the engine for a model."""

    def __init__(self, engine: Engine | EngineGetter | None):
        fixed = isinstance(engine, Engine)
        self.engine: EngineGetter = (lambda _r, _m: engine) if fixed else (engine or _default_engine)
        self._texts: weakref.WeakKeyDictionary[Engine, TokenTexts] = weakref.WeakKeyDictionary()  # go with engines

    @asynccontextmanager
    async def _using(
        self, request: Request, model: str | None, get: EngineGetter | None = None
    ) -> AsyncIterator[Engine]:
        """The engine for ``model`` from ``get`` (default: the getter, which may refuse the model), released to
        the getter when the handler ends; a stream's requests are by then in the engine, which counts them."""
        engine = await run_in_threadpool(get or self.engine, request, model)
        try:
            yield engine
        finally:
            if engine is not None and (release := getattr(self.engine, "release", None)) is not None:
                release(engine)

    def _token_texts(self, engine: Engine) -> TokenTexts:
        if engine not in self._texts:
            self._texts[engine] = TokenTexts(engine.tokenizer)
        return self._texts[engine]

    async def _submit(self, engine: Engine, body: Body, prompt_ids: list[int], prefix: str, timeout_s: float | None):
        """Submit the ``n`` choices; a refusal cancels the choices already queued."""
        if body.n > engine.config.max_choices:
            raise ServiceError(
                400, f"`n` is at most {engine.config.max_choices} on this server.", code="invalid_value", param="n"
            )
        adapter = None if engine.is_base(body.model) else body.model
        pending: list[AsyncRequest] = []
        try:
            for choice in range(body.n):
                request = GenerationRequest(prompt_ids, adapter, _sampling(body, choice), timeout_s=timeout_s)
                pending.append(await AsyncRequest.submit(engine, request))
        except ServiceError as exc:
            for queued in pending:
                queued.handle.cancel()
            if exc.param == "max_tokens":
                exc.param = body.token_limit_field
            raise
        fingerprint = await call(_fingerprint, engine, body.model)
        return pending, ResponseMeta(body.model, len(prompt_ids), fingerprint, prefix)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Any:
        async with self._using(request, body.model) as engine:
            ids = await call(engine.encode, [m.as_dict() for m in body.messages])
            pending, meta = await self._submit(engine, body, ids, "chatcmpl", _deadline(request))
            texts = self._token_texts(engine)
            if body.stream:
                events = chat_chunks(pending, meta, body.include_usage, texts, bool(body.logprobs))
                return StreamingResponse(events, media_type="text/event-stream")
            return chat_completion(meta, await _results(pending, request), texts)

    async def complete(self, body: CompletionRequest, request: Request) -> Any:
        async with self._using(request, body.model) as engine:
            ids = await call(_prompt_ids, engine, body.prompt)
            pending, meta = await self._submit(engine, body, ids, "cmpl", _deadline(request))
            texts = self._token_texts(engine)
            if body.stream:
                events = text_chunks(pending, meta, body.include_usage, texts, body.logprobs is not None)
                return StreamingResponse(events, media_type="text/event-stream")
            return text_completion(meta, await _results(pending, request), texts)

    async def list_adapters(self, request: Request, model: str | None = LISTED_MODEL) -> Any:
        # with a model: the engine serving it if loaded (a getter's ``loaded`` never loads one)
        get = getattr(self.engine, "loaded", None) if model is not None else None
        async with self._using(request, model, get) as engine:
            if engine is None:  # nothing loaded yet: nothing to list
                return EngineState(data=IDLE_STATE)
            stats = await call(engine.stats)
        if (visible := getattr(self.engine, "visible", None)) is not None:  # the service scopes it to the caller
            stats = visible(request, stats)
        return EngineState(data=stats)

    async def load(self, name: str, request: Request) -> Any:
        async with self._using(request, name) as engine:
            return _adapter_state(await call(engine.load_adapter, name))

    async def unload(self, name: str, request: Request) -> Any:
        async with self._using(request, name) as engine:
            await call(engine.unload_adapter, name)
        return AdapterState(id=name, loaded=False)

    async def pin(self, name: str, request: Request, body: AdapterPin | None = None) -> Any:
        pinned = True if body is None else body.pinned
        async with self._using(request, name) as engine:
            if pinned and (check := getattr(self.engine, "check_pin", None)) is not None:  # the service's quota
                await run_in_threadpool(check, request, engine, name)
            return _adapter_state(await call(engine.pin_adapter, name, pinned))

    async def unpin(self, name: str, request: Request) -> Any:
        async with self._using(request, name) as engine:
            return _adapter_state(await call(engine.pin_adapter, name, False))


def _deadline(request: Request) -> float | None:
    """The deployment's per-request deadline (``None`` on the standalone app: the engine's own default)."""
    settings = getattr(request.app.state, "settings", None)
    return getattr(settings, "inference_request_timeout_s", None)


async def _results(pending: Sequence[AsyncRequest], request: Request):
    """Every choice's completion; the first failure cancels the others and is raised. A client that
    disconnects meanwhile cancels them all (uvicorn does not cancel a non-streaming handler by itself)."""
    tasks = [asyncio.ensure_future(p.result()) for p in pending]
    gathered = asyncio.gather(*tasks)
    try:
        while True:
            done, _ = await asyncio.wait({gathered}, timeout=DISCONNECT_POLL_S)
            if done:
                return gathered.result()
            if await request.is_disconnected():
                raise ServiceError(499, "The client closed the connection.", code="client_disconnected")
    finally:
        for task in tasks:
            task.cancel()  # AsyncRequest.events cancels the engine request of every unfinished choice
        gathered.cancel()


def create_inference_router(
    engine: Engine | EngineGetter | None = None,
    *,
    dependencies: Sequence[Any] = (),
) -> APIRouter:
    """Build the router.

    Args:
        engine: the engine, or ``(request, model) -> engine`` (default: ``request.app.state.inference_engine``);
            ``model`` is None for the adapter listing, which names no model (the getter may then return None:
            nothing is loaded yet). The getter runs in the thread pool and may raise a ``ServiceError`` to
            refuse the model.
        dependencies: route dependencies, e.g. ``[Depends(get_principal)]`` to require an API key.
    """
    return inference_router(InferenceRoutes(engine), dependencies)


def _prompt_ids(engine: Engine, prompt: str | list[str] | list[int]) -> list[int]:
    """Token ids of a ``/v1/completions`` prompt: raw text (no chat template) or ids as given."""
    if isinstance(prompt, list) and isinstance(prompt[0], int):
        vocab = engine.model.config.vocab_size
        if any(not 0 <= token < vocab for token in prompt):
            raise ServiceError(400, f"Token ids must be in [0, {vocab}).", code="invalid_prompt", param="prompt")
        return list(prompt)
    return engine.encode(prompt if isinstance(prompt, str) else prompt[0], chat=False)
