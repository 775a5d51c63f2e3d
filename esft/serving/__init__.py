"""Serving ESFT adapters: an engine holding one base model, an adapter cache, expert slots for batches
that mix adapters, hot-swap for the rest, and continuous batching."""

from esft.serving.cache import AdapterCache, CachedAdapter, Resolver, dict_resolver
from esft.serving.config import EngineConfig
from esft.serving.engine import Engine, batch_generate
from esft.serving.errors import (
    AdapterLoadError,
    CacheFullError,
    EngineClosedError,
    EngineFailure,
    RequestCancelled,
    RequestTimeout,
    ServingError,
    UnknownModelError,
)
from esft.serving.grammar import GrammarUnsupportedError
from esft.serving.requests import (
    Completion,
    GenerationRequest,
    RequestHandle,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from esft.serving.slots import ExpertSlots

__all__ = [
    "AdapterCache",
    "AdapterLoadError",
    "CacheFullError",
    "CachedAdapter",
    "Completion",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "EngineFailure",
    "ExpertSlots",
    "GenerationRequest",
    "GrammarUnsupportedError",
    "RequestCancelled",
    "RequestHandle",
    "RequestTimeout",
    "Resolver",
    "SamplingParams",
    "ServingError",
    "TokenEvent",
    "TokenLogprob",
    "UnknownModelError",
    "batch_generate",
    "dict_resolver",
]
