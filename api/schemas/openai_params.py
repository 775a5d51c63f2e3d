"""What this server does with each OpenAI request parameter: the one table behind the inference request
models' refusals, ``docs/openai-compatibility.md`` (``scripts/openai_params.py``) and the tests that send
one request per row.

Every parameter of the official SDK's request types must have a row (the script fails on a new one), so no
parameter is ever accepted and silently ignored: it is implemented, accepted with a documented meaning,
or refused with 400 naming it.
"""

from __future__ import annotations

from typing import Literal

Status = Literal["implemented", "accepted", "refused"]
Row = tuple[Status, str]

CHAT: dict[str, Row] = {
    "messages": ("implemented", "system, developer, user and assistant turns; text content or text parts"),
    "model": ("implemented", "the base model or one of its adapters"),
    "frequency_penalty": ("implemented", "-2 to 2, per occurrence in the completion so far"),
    "logit_bias": ("implemented", "token id -> -100..100; -100 bans the token"),
    "logprobs": ("implemented", "log-probabilities of the sampled tokens (after bias, penalties and grammar)"),
    "max_completion_tokens": ("implemented", "at most min(context - prompt, the server's max_new_tokens); 400 above"),
    "max_tokens": ("implemented", "as `max_completion_tokens`"),
    "n": ("implemented", "choices per request, up to the server's `max_choices`"),
    "presence_penalty": ("implemented", "-2 to 2, once per token present in the completion so far"),
    "response_format": ("implemented", "`text`, `json_object`, `json_schema` (constrained decoding, compact JSON)"),
    "seed": ("implemented", "0 to 2**63 - 1; choice i of a seeded request uses seed + i"),
    "stop": ("implemented", "up to 4 strings"),
    "stream": ("implemented", "server-sent events, `data: [DONE]` last"),
    "stream_options": ("implemented", "`include_usage`"),
    "temperature": ("implemented", "0 to 2; below 1e-4 decodes greedily"),
    "top_logprobs": ("implemented", "0 to 20, with `logprobs: true`"),
    "top_p": ("implemented", "(0, 1]"),
    "user": ("accepted", "an end-user id; accepted for compatibility, not stored"),
    "audio": ("refused", "text only"),
    "function_call": ("refused", "no tool calling"),
    "functions": ("refused", "no tool calling"),
    "metadata": ("refused", "completions are not stored"),
    "modalities": ("refused", "text only"),
    "moderation": ("refused", "no moderation"),
    "parallel_tool_calls": ("refused", "no tool calling"),
    "prediction": ("refused", "no predicted outputs"),
    "prompt_cache_key": ("refused", "no prompt cache"),
    "prompt_cache_options": ("refused", "no prompt cache"),
    "prompt_cache_retention": ("refused", "no prompt cache"),
    "reasoning_effort": ("refused", "not a reasoning model"),
    "safety_identifier": ("refused", "no abuse monitoring"),
    "service_tier": ("refused", "one tier"),
    "store": ("refused", "completions are not stored"),
    "tool_choice": ("refused", "no tool calling"),
    "tools": ("refused", "no tool calling"),
    "verbosity": ("refused", "not a reasoning model"),
    "web_search_options": ("refused", "no web search"),
}

COMPLETIONS: dict[str, Row] = {
    "model": ("implemented", "the base model or one of its adapters"),
    "prompt": ("implemented", "text (no chat template), a one-element list of text, or token ids"),
    "frequency_penalty": ("implemented", "-2 to 2"),
    "logit_bias": ("implemented", "token id -> -100..100; -100 bans the token"),
    "logprobs": ("implemented", "0 to 5: the sampled token's log-probability and the top `logprobs`"),
    "max_tokens": ("implemented", "default 16; at most min(context - prompt, the server's max_new_tokens)"),
    "n": ("implemented", "choices per request, up to the server's `max_choices`"),
    "presence_penalty": ("implemented", "-2 to 2"),
    "seed": ("implemented", "0 to 2**63 - 1; choice i of a seeded request uses seed + i"),
    "stop": ("implemented", "up to 4 strings"),
    "stream": ("implemented", "server-sent events, `data: [DONE]` last"),
    "stream_options": ("implemented", "`include_usage`"),
    "temperature": ("implemented", "0 to 2; below 1e-4 decodes greedily"),
    "top_p": ("implemented", "(0, 1]"),
    "user": ("accepted", "an end-user id; accepted for compatibility, not stored"),
    "best_of": ("refused", "use `n`"),
    "echo": ("refused", "the prompt is not echoed"),
    "suffix": ("refused", "no insertion"),
}

JOBS: dict[str, Row] = {
    "model": ("implemented", "a registered base model"),
    "training_file": ("implemented", "an uploaded JSONL file"),
    "validation_file": ("implemented", "an uploaded JSONL file"),
    "method": ("implemented", "`supervised` (the service's ESFT defaults) or `esft` with every ESFT option"),
    "seed": ("implemented", "the run's seed"),
    "suffix": ("implemented", "part of the model name `ft:{base}:{project}:{suffix}:{job}`"),
    "metadata": ("implemented", "up to 16 string pairs; `GET /v1/fine_tuning/jobs?metadata[k]=v` filters"),
    "hyperparameters": ("implemented", "the older form of `method.supervised.hyperparameters`"),
    "integrations": ("refused", "no integrations (an empty list is accepted)"),
}

EXTENSIONS: dict[str, str] = {"ignore_eos": "vLLM's: generate past the stop tokens up to `max_tokens`"}


def refused(table: dict[str, Row]) -> dict[str, str]:
    """``parameter -> why`` for the parameters a route answers with 400."""
    return {name: note for name, (status, note) in table.items() if status == "refused"}
