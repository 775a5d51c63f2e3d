"""Validate what the inference routes return against the official `openai` SDK's own types, strictly.

``objects(response)`` parses a JSON answer or an SSE stream and validates every object in it with
``Model.model_validate(obj, strict=True)`` (``ChatCompletion``, ``ChatCompletionChunk``, ``Completion``);
``sdk_object(obj)`` does the same for an object the SDK handed back (as the server sent it).

One documented exception: the SDK types ``CompletionChoice.finish_reason`` as required and non-null, yet
OpenAI's own ``/v1/completions`` streams send ``finish_reason: null`` on every chunk but a choice's last
(so does vLLM). Such a chunk is checked with that one field set aside (it must be null, and only there).
"""

from __future__ import annotations

import json
from typing import Any

from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

SDK_TYPES: dict[str, type[BaseModel]] = {
    "chat.completion": ChatCompletion,
    "chat.completion.chunk": ChatCompletionChunk,
    "text_completion": Completion,
}


def strict(obj: dict[str, Any], *, chunk: bool = False) -> BaseModel:
    """The SDK type named by ``obj["object"]``, validated strictly (``chunk``: a stream event)."""
    if chunk and obj["object"] == "text_completion":
        open_choices = [c for c in obj["choices"] if c["finish_reason"] is None]
        obj = {**obj, "choices": [{**c, "finish_reason": "stop"} if c in open_choices else c for c in obj["choices"]]}
    return SDK_TYPES[obj["object"]].model_validate(obj, strict=True)


def sse_payloads(text: str) -> list[dict[str, Any]]:
    """The JSON events of an SSE body, which must end with ``data: [DONE]``."""
    lines = [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]
    assert lines and lines[-1] == "[DONE]", text[-200:]
    return [json.loads(line) for line in lines[:-1]]


def objects(response) -> list[dict[str, Any]]:
    """Every object of a 200 answer (one JSON object, or the events of a stream), each validated strictly."""
    assert response.status_code == 200, response.text
    streamed = response.headers["content-type"].startswith("text/event-stream")
    found = sse_payloads(response.text) if streamed else [response.json()]
    for obj in found:
        strict(obj, chunk=streamed)
        if streamed:
            assert obj["object"] in ("chat.completion.chunk", "text_completion")
            assert "usage" in obj and (obj["usage"] is None) == bool(obj["choices"])  # null except the usage chunk
    return found


def sdk_object(obj: BaseModel) -> BaseModel:
    """Strictly validate an object the SDK returned (its fields as the server sent them)."""
    return strict(obj.model_dump(mode="json", exclude_unset=True))
