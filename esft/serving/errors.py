"""Errors of the serving engine; each carries the HTTP-ish meaning the service maps it to (``status``)."""

from __future__ import annotations

from esft.errors import ESFTError


class ServingError(ESFTError):
    """Base of the engine's errors; ``status`` is the HTTP status a service should answer with."""

    code = "serving_error"
    status = 400


class UnknownModelError(ServingError, LookupError):
    """The ``model`` names neither the base model nor an adapter the resolver knows."""

    code = "model_not_found"
    status = 404


class AdapterLoadError(ServingError):
    """An adapter could not be read or does not fit the base model (only its own requests fail)."""

    code = "adapter_load_failed"
    status = 400


class CacheFullError(ServingError):
    """The adapter does not fit the host-memory budget next to the pinned adapters."""

    code = "adapter_cache_full"
    status = 409


class EngineClosedError(ServingError):
    """The engine was shut down; no new requests are accepted."""

    code = "engine_closed"
    status = 503


class RequestCancelled(ServingError):
    """The request was cancelled (client gone) before it finished."""

    code = "cancelled"
    status = 499
