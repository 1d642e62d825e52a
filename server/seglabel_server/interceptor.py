"""Domain error kinds -> gRPC status codes, and per-method request metrics, in one place for unary
and streaming calls alike (the shape of text-generation-inference's ``interceptor.py``)."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from seglabel_server.errors import ErrorKind, error_kind
from seglabel_server.metrics import Metrics

log = logging.getLogger(__name__)

GRPC_CODES = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.OVER_LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    kind, message = error_kind(exc)
    return GRPC_CODES[kind], message


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the methods of the services named in ``services`` (health and reflection pass through):
    a domain error becomes its status, anything else INTERNAL (logged with its traceback), and
    success, failure (by code) and duration are counted per method."""

    def __init__(self, metrics: Metrics, services: tuple[str, ...]):
        self.metrics = metrics
        self.prefixes = tuple(f"/{s}/" for s in services)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefixes):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _failed(self, method: str, exc: Exception, context) -> None:
        code, message = grpc_status(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.error("%s failed", method, exc_info=exc)
        self.metrics.request_failure.labels(method, code.name).inc()
        await context.abort(code, message)

    def _done(self, method: str, t0: float) -> None:
        self.metrics.request_success.labels(method).inc()
        self.metrics.request_seconds.labels(method).observe(time.perf_counter() - t0)

    def _unary(self, method: str, behaviour):
        async def call(request, context):
            t0 = time.perf_counter()
            try:
                reply = await behaviour(request, context)
            except asyncio.CancelledError:
                self.metrics.request_failure.labels(method, "CANCELLED").inc()
                raise
            except Exception as exc:
                await self._failed(method, exc, context)
            self._done(method, t0)
            return reply

        return call

    def _stream(self, method: str, behaviour):
        async def call(request, context):
            t0 = time.perf_counter()
            try:
                async for reply in behaviour(request, context):
                    yield reply
            except (asyncio.CancelledError, GeneratorExit):
                self.metrics.request_failure.labels(method, "CANCELLED").inc()
                raise
            except Exception as exc:
                await self._failed(method, exc, context)
            self._done(method, t0)

        return call
