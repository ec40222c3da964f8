"""Pure-ASGI middleware of the service: request metrics for every response, bearer-token authentication checked on
the headers (before any body byte is read), and a request-body size limit."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Collection

from starlette.exceptions import HTTPException

from rerank.serve.metrics import ServeMetrics

__all__ = ["MetricsMiddleware", "BodyLimitMiddleware", "AuthMiddleware", "error_body", "send_json"]


def error_body(message: str, error_type: str) -> dict[str, str]:
    """Every error's JSON body: ``message`` is the field Cohere clients read, ``error`` TEI's, ``detail`` Jina's (and
    FastAPI's), the same text."""
    return {"message": message, "error": message, "detail": message, "error_type": error_type}


async def send_json(send: Callable, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """Answer a whole JSON response through the raw ASGI ``send``."""
    data = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": data})


class MetricsMiddleware:
    """Count every response by endpoint and status and time it (unknown paths are labelled ``other``)."""

    def __init__(self, app: Callable, metrics: ServeMetrics, endpoints: Collection[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = frozenset(endpoints)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self.endpoints else "other"
        status = 500
        start = time.perf_counter()

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


class _BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-stream; an HTTPException so that body parsers re-raise it unchanged."""


class BodyLimitMiddleware:
    """Answer 413 (JSON body) when a request body exceeds ``limit`` bytes, by header or by streamed count."""

    def __init__(self, app: Callable, limit: int, on_error: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.on_error = on_error

    async def _reject(self, send: Callable) -> None:
        if self.on_error is not None:
            self.on_error("payload_too_large")
        await send_json(send, 413, error_body(f"request body exceeds {self.limit} bytes", "payload_too_large"))

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._reject(send)
                    return
        received = 0
        started = False

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge(413, f"request body exceeds {self.limit} bytes")
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(send)


class AuthMiddleware:
    """With an ``api_key``, answer 401 to any request without ``Authorization: Bearer <api_key>`` (compared in
    constant time) except on ``open_paths``, from the headers alone: an unauthenticated body is never read."""

    def __init__(
        self, app: Callable, api_key: str | None, open_paths: Collection[str], on_error: Callable[[str], None]
    ) -> None:
        self.app = app
        self.key = api_key.encode() if api_key is not None else None
        self.open_paths = frozenset(open_paths)
        self.on_error = on_error

    def _authorized(self, scope: dict) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key or b"")
        return False

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in self.open_paths or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        self.on_error("unauthorized")
        msg = error_body("missing or invalid bearer token", "unauthorized")
        await send_json(send, 401, msg, [(b"www-authenticate", b"Bearer"), (b"connection", b"close")])
