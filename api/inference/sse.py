"""Server-sent events in the OpenAI stream format: role chunk, content chunks, finish chunk, usage, ``[DONE]``.

Every chunk carries ``choices[].index`` (the SDK's ``.stream()`` helper needs it); the usage chunk has
``choices: []``; an error after the stream started is sent as an ``{"error": ...}`` event, which the
SDK raises as ``APIError``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from api.core.errors import ServiceError
from api.errors import error_body
from api.inference.bridge import AsyncRequest
from esft.serving import Completion


@dataclass
class ResponseMeta:
    """Identity shared by a response and all its chunks."""

    model: str
    prompt_tokens: int
    prefix: str = "chatcmpl"
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.id = self.id or f"{self.prefix}-{uuid.uuid4().hex[:24]}"

    def usage(self, completion: Completion) -> dict[str, int]:
        done = completion.completion_tokens
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": done,
            "total_tokens": self.prompt_tokens + done,
        }


def _event(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def _error_event(exc: BaseException) -> str:
    if isinstance(exc, ServiceError):
        return _event(error_body(exc.status, exc.message, exc.code, exc.param))
    return _event(error_body(500, "The server had an error processing your request.", "server_error", None))


async def chat_chunks(pending: AsyncRequest, meta: ResponseMeta, include_usage: bool) -> AsyncIterator[str]:
    """``chat.completion.chunk`` events for one request."""
    head = {"id": meta.id, "object": "chat.completion.chunk", "created": meta.created, "model": meta.model}

    def chunk(delta: dict, finish: str | None = None) -> str:
        return _event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]})

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for event in pending.events():
            yield chunk({"content": event.text})
    except Exception as exc:  # noqa: BLE001 - reported in the stream; the status line is already sent
        yield _error_event(exc)
        yield _event("[DONE]")
        return
    yield chunk({}, pending.completion.finish_reason)
    if include_usage:
        yield _event({**head, "choices": [], "usage": meta.usage(pending.completion)})
    yield _event("[DONE]")


async def text_chunks(pending: AsyncRequest, meta: ResponseMeta, include_usage: bool) -> AsyncIterator[str]:
    """``text_completion`` events for one request."""
    head = {"id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model}

    def chunk(text: str, finish: str | None = None) -> str:
        return _event({**head, "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}]})

    try:
        async for event in pending.events():
            yield chunk(event.text)
    except Exception as exc:  # noqa: BLE001
        yield _error_event(exc)
        yield _event("[DONE]")
        return
    yield chunk("", pending.completion.finish_reason)
    if include_usage:
        yield _event({**head, "choices": [], "usage": meta.usage(pending.completion)})
    yield _event("[DONE]")
