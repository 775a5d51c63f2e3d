"""Errors of the serving engine, each with a stable ``code``; a server maps codes to its own statuses."""

from __future__ import annotations

from esft.errors import ESFTError


class ServingError(ESFTError):
    """Base of the engine's errors."""

    code = "serving_error"


class UnknownModelError(ServingError, LookupError):
    """The ``model`` names neither the base model nor an adapter the resolver knows."""

    code = "model_not_found"


class AdapterLoadError(ServingError):
    """An adapter could not be read or does not fit the base model (only its own requests fail)."""

    code = "adapter_load_failed"


class CacheFullError(ServingError):
    """The adapter does not fit the host-memory budget next to the pinned adapters."""

    code = "adapter_cache_full"


class EngineClosedError(ServingError):
    """The engine was shut down; no new requests are accepted."""

    code = "engine_closed"


class EngineFailure(ServingError):
    """The scheduler failed outside any one request's sampling (a bug or a fault); the requests it was
    decoding failed with this, the engine carries on."""

    code = "engine_error"


class RequestCancelled(ServingError):
    """The request was cancelled (client gone) before it finished."""

    code = "cancelled"


class RequestTimeout(ServingError):
    """The request did not finish within its deadline (``timeout_s``); it was stopped and its slot freed."""

    code = "timeout"
