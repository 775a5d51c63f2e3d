"""Request-size limits enforced before a body reaches a route (declared and streamed lengths alike)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

_MULTIPART_OVERHEAD = 64 * 1024


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """413 for bodies over the limit: ``max_upload_bytes`` for uploads, else ``max_json_bytes``."""

    def __init__(self, app: ASGIApp, *, max_upload_bytes: int, max_json_bytes: int, upload_paths: tuple[str, ...]):
        self.app = app
        self.max_upload = max_upload_bytes + _MULTIPART_OVERHEAD
        self.max_json = max_json_bytes
        self.upload_paths = upload_paths

    def _limit(self, scope: Scope) -> int:
        return self.max_upload if scope.get("path") in self.upload_paths else self.max_json

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await self._reject(scope, receive, send, limit)
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._reject(scope, receive, send, limit)

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        message = f"Request body is larger than the limit of {limit} bytes."
        await error_response(413, message, "request_too_large", None)(scope, receive, send)
