"""Request bodies of the inference routes (chat and text completions, adapter pins), torch-free so that the
service's OpenAPI document can declare them without loading the engine.

Requests are strict (no type coercion) and closed: an OpenAI parameter this server does not implement is
refused with 400 naming it (``openai_params``), any other unknown field with 400 "Unrecognized request
argument supplied". Every number is bounded, so no request can break the sampler.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from api.core.errors import ServiceError
from api.schemas import openai_params

MAX_SEED = 2**63 - 1  # esft.serving.requests.MAX_SEED (not imported: that package needs torch)
MAX_N = 128  # OpenAI's bound; the engine's `max_choices` is the server's own, lower one
MAX_JSON_SCHEMA_CHARS = 65_536  # esft.serving.requests.MAX_JSON_SCHEMA_CHARS: the grammar masks every step

Penalty = Annotated[float, Field(default=0.0, ge=-2.0, le=2.0, allow_inf_nan=False)]


def _refuse_unknown(data: Any, fields: dict, table: dict[str, openai_params.Row]) -> Any:
    """400 naming the first unsupported OpenAI parameter or unknown field (set, not null) in ``data``."""
    if not isinstance(data, dict):
        return data
    refused = openai_params.refused(table)
    for key, value in data.items():
        if key in refused and value is not None:
            raise ServiceError(
                400,
                f"`{key}` is not supported by this server ({refused[key]}).",
                code="unsupported_parameter",
                param=key,
            )
        if key not in fields and key not in refused:
            raise ServiceError(
                400, f"Unrecognized request argument supplied: {key}", code="unrecognized_argument", param=key
            )
    return {key: value for key, value in data.items() if key in fields}


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Closed):
    include_usage: bool = False


class _Sampling(_Closed):
    """Fields shared by chat and text completions."""

    model: str = Field(min_length=1, description="the base model's name or an adapter's name")
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False, description="0 is greedy")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    stop: str | list[Annotated[str, Field(min_length=1)]] | None = Field(
        default=None, max_length=4, description="up to 4 strings that end the completion"
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_N, description="choices to generate (up to the server's `max_choices`)")
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0, allow_inf_nan=False)]] | None = Field(
        default=None, max_length=1024, description="token id (as a string) -> bias; -100 bans the token"
    )
    user: str | None = None
    ignore_eos: bool = Field(
        default=False, description="vLLM extension: generate past the stop tokens, up to `max_tokens`"
    )

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias is not None and not all(key.isdigit() and len(key) <= 9 for key in bias):
            raise ValueError("keys must be token ids (non-negative integers written as strings)")
        return bias

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def bias_pairs(self) -> tuple[tuple[int, float], ...]:
        return tuple((int(token), float(bias)) for token, bias in (self.logit_bias or {}).items())

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class TextPart(_Closed):
    type: Literal["text"] = "text"
    text: str


class ChatMessage(_Closed):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_dict(self) -> dict[str, str]:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content}


class JsonSchemaFormat(_Closed):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    schema_: dict[str, Any] = Field(
        default_factory=dict, alias="schema", description=f"a JSON schema (at most {MAX_JSON_SCHEMA_CHARS} characters)"
    )
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _bounded(cls, schema: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(schema)) > MAX_JSON_SCHEMA_CHARS:
            raise ValueError(f"the schema is too long: at most {MAX_JSON_SCHEMA_CHARS} characters of JSON")
        return schema


class ResponseFormat(_Closed):
    """``text`` (no constraint), ``json_object`` (any JSON object) or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("`json_schema` is required with type `json_schema`, and only with it")
        return self

    def schema_text(self) -> str | None:
        """The JSON schema the completion must follow, as JSON text (``None``: free text)."""
        if self.type == "json_object":
            return json.dumps({"type": "object"})
        if self.type == "json_schema":
            return json.dumps(self.json_schema.schema_ or {"type": "object"})
        return None


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: ResponseFormat | None = None

    @model_validator(mode="before")
    @classmethod
    def _closed(cls, data: Any) -> Any:
        return _refuse_unknown(data, cls.model_fields, openai_params.CHAT)

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ServiceError(
                400, "`top_logprobs` needs `logprobs: true`.", code="invalid_value", param="top_logprobs"
            )
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def token_limit_field(self) -> str:
        return "max_completion_tokens" if self.max_completion_tokens else "max_tokens"

    @property
    def logprobs_k(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None

    def schema_text(self) -> str | None:
        return self.response_format.schema_text() if self.response_format else None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] = Field(description="text, a one-element list of text, or token ids")
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)

    @model_validator(mode="before")
    @classmethod
    def _closed(cls, data: Any) -> Any:
        return _refuse_unknown(data, cls.model_fields, openai_params.COMPLETIONS)

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and self.prompt and isinstance(self.prompt[0], str) and len(self.prompt) != 1:
            raise ServiceError(
                400,
                "Only one prompt per request is supported; send one request per prompt.",
                code="invalid_value",
                param="prompt",
            )
        if isinstance(self.prompt, list) and not self.prompt:
            raise ServiceError(400, "`prompt` is empty.", code="invalid_value", param="prompt")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def token_limit_field(self) -> str:
        return "max_tokens"

    @property
    def logprobs_k(self) -> int | None:
        return self.logprobs

    def schema_text(self) -> str | None:
        return None


class AdapterPin(_Closed):
    pinned: bool = True
