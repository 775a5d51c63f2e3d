"""From the engine's thread to asyncio: submit a request off the event loop, await its events and result.

Engine errors become ``ServiceError``s with the status ``SERVING_STATUS`` gives them (404 unknown model,
400 incompatible adapter, 409 cache full, ...), so one handler renders them in the OpenAI envelope.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool

from api.core.errors import ServiceError
from esft.errors import ESFTError
from esft.serving import (
    AdapterLoadError,
    CacheFullError,
    Completion,
    Engine,
    EngineClosedError,
    EngineFailure,
    GenerationRequest,
    RequestCancelled,
    RequestHandle,
    RequestTimeout,
    ServingError,
    TokenEvent,
    UnknownModelError,
)

# The HTTP status of each engine error; any other library error is the client's input (400).
SERVING_STATUS: dict[type[ServingError], int] = {
    UnknownModelError: 404,
    AdapterLoadError: 400,
    CacheFullError: 409,
    EngineClosedError: 503,
    EngineFailure: 500,
    RequestTimeout: 504,
    RequestCancelled: 499,
}


def service_error(exc: ESFTError) -> ServiceError:
    """The HTTP error for a library error; a ``ServiceError`` (raised by a resolver) keeps its own status."""
    if isinstance(exc, ServiceError):
        return exc
    status = next((code for kind, code in SERVING_STATUS.items() if isinstance(exc, kind)), 400)
    return ServiceError(status, exc.message, code=exc.code, param=exc.param)


async def call(fn, *args):
    """Run a blocking engine call in the thread pool, translating library errors."""
    try:
        return await run_in_threadpool(fn, *args)
    except ESFTError as exc:
        raise service_error(exc) from exc


class AsyncRequest:
    """One generation request seen from a coroutine.

    >>> request = await AsyncRequest.submit(engine, GenerationRequest(ids, model="math"))  # doctest: +SKIP
    >>> async for event in request.events(): ...  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self.handle: RequestHandle | None = None
        self.completion: Completion | None = None

    @classmethod
    async def submit(cls, engine: Engine, request: GenerationRequest) -> AsyncRequest:
        self = cls()
        self.handle = await call(engine.submit, request, self._on_event)
        return self

    def _on_event(self, event) -> None:
        """Called on the engine thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down)
            if self.handle is not None:
                self.handle.cancel()

    async def events(self) -> AsyncIterator[TokenEvent]:
        """Token events until the request completes; cancels the request if the consumer goes away."""
        try:
            while True:
                event = await self._queue.get()
                if isinstance(event, Completion):
                    self.completion = event
                    return
                if isinstance(event, BaseException):
                    if isinstance(event, ESFTError):
                        raise service_error(event) from event
                    raise event
                yield event
        finally:
            if self.completion is None and self.handle is not None:
                self.handle.cancel()

    async def result(self) -> Completion:
        """Wait for the completion (token events are discarded)."""
        async for _ in self.events():
            pass
        return self.completion
