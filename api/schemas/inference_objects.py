"""Response objects of the inference routes, in OpenAI's shapes (``chat.completion``, ``chat.completion.chunk``,
``text_completion``) and the engine's adapter states; torch-free, for the service's OpenAPI document.

The official SDK's types validate them strictly (``model_validate(obj, strict=True)``); the tests check that.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

FinishReason = Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int = Field(description="summed over all choices")
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = Field(description="the token's UTF-8 bytes (a token may hold part of a character)")


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob] | None
    refusal: None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str = Field(description="the base model and the adapter's weights revision")


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    refusal: None = None


class ChunkChoice(BaseModel):
    index: int
    delta: ChunkDelta
    finish_reason: FinishReason | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a chat stream; ``usage`` is null except on the last chunk with ``include_usage``."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str


class TextLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: TextLogprobs | None = None


class TextCompletion(BaseModel):
    """A text completion, or (with ``stream: true``) one event of its stream."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage | None = None
    system_fingerprint: str


class AdapterState(BaseModel):
    """An adapter as the engine holds it."""

    id: str
    object: Literal["adapter"] = "adapter"
    loaded: bool
    pinned: bool = False
    bytes: int | None = None
    load_ms: float | None = None


class EngineState(BaseModel):
    object: Literal["engine"] = "engine"
    data: dict[str, Any]
