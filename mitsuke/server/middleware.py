"""ASGI middleware of the HTTP API: metrics, API key, body-size limit. Errors are JSON, never tracebacks."""
from __future__ import annotations

import hmac
import json
import time
from http import HTTPStatus
from typing import Any

from mitsuke.server.metrics import Metrics

__all__ = ["MetricsMiddleware", "GuardMiddleware", "error_body", "OPEN_PATHS"]

# Paths anyone may read when an API key is set: the page, health checks and the API description.
OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"})


def error_body(status: int, kind: str, message: str) -> bytes:
    return json.dumps({"error": {"status": status, "type": kind, "message": message}},
                      ensure_ascii=False).encode("utf-8")


async def _send_error(send, status: int, kind: str, message: str, headers: list | None = None) -> None:
    body = error_body(status, kind, message)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Counts every HTTP request by route template (unmatched paths share one label) and status."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": HTTPStatus.INTERNAL_SERVER_ERROR.value}  # unless the app starts a response

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight -= 1
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(path, scope.get("method", ""), status["code"], time.perf_counter() - started)


class GuardMiddleware:
    """API key (``Authorization: Bearer``, constant-time comparison) and a request body limit.

    The body is read up to ``max_body_bytes`` before the app sees it: a larger
    one (declared or streamed) gets 413 without being buffered further.
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.key = api_key.encode("utf-8") if api_key else None
        self.max_body = int(max_body_bytes)

    def _authorized(self, scope) -> bool:
        if self.key is None or scope["path"] in OPEN_PATHS or scope.get("method") == "OPTIONS":
            return True
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key)
        return False

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._authorized(scope):
            return await _send_error(send, 401, "unauthorized",
                                     "missing or wrong API key: send 'Authorization: Bearer KEY' "
                                     "(the key the server was started with)",
                                     [(b"www-authenticate", b'Bearer realm="mitsuke"')])
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_error(send, 400, "bad_request", "Content-Length is not a number")
                if declared > self.max_body:
                    return await _send_error(send, 413, "body_too_large", self._too_large(declared))
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body:
                return await _send_error(send, 413, "body_too_large", self._too_large(size, streamed=True))
            chunks.append(body)
            more = message.get("more_body", False)
        replay = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        sent = False

        async def replay_receive() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return replay
            return await receive()

        await self.app(scope, replay_receive, send)

    def _too_large(self, size: int, streamed: bool = False) -> str:
        what = f"more than {self.max_body:,}" if streamed else f"{size:,}"
        return (f"request body of {what} bytes is over the limit of {self.max_body:,} bytes "
                "(mitsuke serve --max-body-bytes)")
