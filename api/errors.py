"""The one translation of every failure into the OpenAI error envelope.

Every response that is not a success carries ``{"error": {"message", "type", "param", "code"}}``: our own
``ServiceError``s, library ``ESFTError``s, FastAPI's 404/405/422, oversized bodies and unexpected exceptions
(logged with their trace, answered without it).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from api.core.errors import ServiceError
from esft.errors import ESFTError

log = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(
    status: int, message: str, code: str | None, param: str | None, kind: str | None = None
) -> dict[str, Any]:
    kind = kind or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(status: int, message: str, code: str | None, param: str | None = None, headers=None, kind=None):
    return JSONResponse(error_body(status, message, code, param, kind), status_code=status, headers=headers)


async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    headers = dict(exc.headers or {})
    if exc.status == 409:
        headers.setdefault("x-should-retry", "false")  # the openai SDK retries 409 unless told not to
    return error_response(exc.status, exc.message, exc.code, exc.param, headers, exc.type)


async def _library_error(_: Request, exc: ESFTError) -> JSONResponse:
    return error_response(400, exc.message, exc.code, exc.param)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    message = exc.detail if isinstance(exc.detail, str) else "Request failed."
    if exc.status_code == 404 and message == "Not Found":
        message = "Unknown URL; see /openapi.json for the available routes."
    return error_response(exc.status_code, message, codes.get(exc.status_code, "http_error"), None, exc.headers)


# Union members and constraint wrappers pydantic adds to an error's location: not part of the field's path.
_LOC_TAGS = re.compile(
    r"^(int|float|str|bool|none|function-.*|constrained-.*|lax-.*|(enum|literal|json-or-python)\[.*\])$"
)


def loc_to_param(loc: tuple | list) -> str | None:
    """The field as OpenAI names it: ``messages[1].content``, ``method.esft.top_p``.

    A leading ``body``/``query``/``path``/``header``/``cookie`` says where the field is; only there is it dropped
    (a body field may well be called ``path``).
    """
    param = ""
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    for part in loc:
        if isinstance(part, str) and _LOC_TAGS.match(part):
            break
        param += f"[{part}]" if isinstance(part, int) else f".{part}" if param else str(part)
    return param or None


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    """A malformed request is a 400 naming the first offending field (OpenAI answers 400, not 422)."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    if first.get("type") == "json_invalid":  # its location is a character offset, not a field
        where, why = first["loc"][-1], (first.get("ctx") or {}).get("error", "malformed")
        return error_response(400, f"The body is not valid JSON ({why} at character {where}).", "invalid_json", None)
    param = loc_to_param(first.get("loc", ()))
    message = "; ".join(f"{loc_to_param(e.get('loc', ())) or 'body'}: {e.get('msg')}" for e in errors[:5])
    return error_response(400, message, "invalid_request", param)


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler that shapes errors into the envelope."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(ESFTError, _library_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


class CatchAllMiddleware:
    """Outermost ASGI middleware: an unexpected exception becomes a 500 envelope with no trace."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_wrapper(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            response = error_response(500, "The server had an error processing your request.", "server_error")
            await response(scope, receive, send)
