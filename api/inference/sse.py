"""Server-sent events in the OpenAI stream format: per choice a role chunk, content chunks and a finish
chunk (choices of ``n`` > 1 interleave, each chunk names its ``index``), then the usage chunk when asked
(``choices: []``; every other chunk has ``usage: null``), then ``[DONE]``.

An error after the stream started is sent as an ``{"error": ...}`` event, which the SDK raises as ``APIError``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

from api.core.errors import ServiceError
from api.errors import error_body
from api.inference.bridge import AsyncRequest
from api.inference.objects import ResponseMeta, TokenTexts
from esft.serving import TokenEvent


def _event(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def _error_event(exc: BaseException) -> str:
    if isinstance(exc, ServiceError):
        return _event(error_body(exc.status, exc.message, exc.code, exc.param))
    return _event(error_body(500, "The server had an error processing your request.", "server_error", None))


async def merged_events(pending: Sequence[AsyncRequest]) -> AsyncIterator[tuple[int, TokenEvent | None]]:
    """``(choice index, event)`` of all choices as they come; ``(index, None)`` when that choice is done.

    Raises the first choice's error; closing the iterator cancels every choice still running.
    """
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, request: AsyncRequest) -> None:
        try:
            async for event in request.events():
                await queue.put((index, event))
            await queue.put((index, None))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, request)) for i, request in enumerate(pending)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if isinstance(item, Exception):
                raise item
            running -= item is None
            yield index, item
    finally:
        for task in tasks:
            task.cancel()


async def _stream(pending, meta: ResponseMeta, include_usage: bool, kind: str, choice) -> AsyncIterator[str]:
    """The events of one response; ``choice(index, event | None, finish_reason)`` builds a choice object."""
    head = meta.head(kind)
    if kind == "chat.completion.chunk":
        for index in range(len(pending)):
            yield _event({**head, "choices": [choice(index, None, None)], "usage": None})
    try:
        async for index, event in merged_events(pending):
            finish = None if event is not None else pending[index].completion.finish_reason
            yield _event({**head, "choices": [choice(index, event, finish)], "usage": None})
    except Exception as exc:  # noqa: BLE001 - reported in the stream; the status line is already sent
        yield _error_event(exc)
        yield _event("[DONE]")
        return
    if include_usage:
        yield _event({**head, "choices": [], "usage": meta.usage([p.completion for p in pending])})
    yield _event("[DONE]")


def chat_chunks(pending, meta: ResponseMeta, include_usage: bool, texts: TokenTexts, logprobs: bool):
    """``chat.completion.chunk`` events: the role chunk of each choice (``event`` None before any token),
    content chunks, finish chunks."""
    started: set[int] = set()

    def choice(index: int, event: TokenEvent | None, finish: str | None) -> dict[str, Any]:
        if index not in started:  # the role chunk
            started.add(index)
            return {
                "index": index,
                "delta": {"role": "assistant", "content": ""},
                "finish_reason": None,
                "logprobs": None,
            }
        delta = {} if event is None else {"content": event.text}
        entries = texts.chat_logprobs(event.logprobs) if logprobs and event is not None else None
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": entries}

    return _stream(pending, meta, include_usage, "chat.completion.chunk", choice)


def text_chunks(pending, meta: ResponseMeta, include_usage: bool, texts: TokenTexts, logprobs: bool):
    """``text_completion`` events, one per token event and a finish event per choice."""
    sent = [0] * len(pending)  # characters sent per choice (logprobs' text offsets)

    def choice(index: int, event: TokenEvent | None, finish: str | None) -> dict[str, Any]:
        text = "" if event is None else event.text
        entries = texts.text_logprobs(event.logprobs, sent[index]) if logprobs and event is not None else None
        sent[index] += len(text)
        return {"index": index, "text": text, "finish_reason": finish, "logprobs": entries}

    return _stream(pending, meta, include_usage, "text_completion", choice)
