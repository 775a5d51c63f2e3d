"""The service's error: the library's ``ESFTError`` (code, message, param) plus the HTTP status to answer with.

Raised by services and the worker alike; only ``api.errors`` turns it into a response, so this module stays
free of FastAPI.
"""

from __future__ import annotations

from esft.errors import ESFTError


class ServiceError(ESFTError):
    """A failure the client can act on; ``status`` is the HTTP status, ``code`` a stable machine code."""

    code = "service_error"

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str,
        param: str | None = None,
        headers: dict | None = None,
        type: str | None = None,
    ):
        super().__init__(message, param=param, code=code)
        self.status = status
        self.headers = headers
        self.type = type  # the envelope's ``type`` when not the status's usual one (OpenAI's 429 "requests")


def not_found(kind: str, ident: str, *, param: str | None = None) -> ServiceError:
    """404 for a missing id; also used for ids of another project, so existence never leaks."""
    return ServiceError(404, f"No {kind} with id {ident!r} found.", code=f"{kind}_not_found", param=param)
