"""The gRPC edge, in one place for unary and streaming calls alike (the shape of
text-generation-inference's ``interceptor.py``): bearer-token authentication, malformed request
messages, domain error kinds -> status codes, per-method request metrics, and streams whose client
stops reading."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time

import grpc

from seglabel_server.errors import ErrorKind, InvalidArgument, LimitExceeded, Unauthenticated, error_kind
from seglabel_server.metrics import Metrics
from seglabel_server.transport.auth import CEILING, Tokens

log = logging.getLogger(__name__)

GRPC_CODES = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.OVER_LIMIT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.CANCELLED: grpc.StatusCode.CANCELLED,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.PERMISSION: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.NOT_SERVED: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}


# Answers that another try of the same request may not get (a dataset job tries them again).
TRANSIENT = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                       grpc.StatusCode.CANCELLED})  # fmt: skip


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    kind, message = error_kind(exc)
    return GRPC_CODES[kind], message


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps the methods of the services named in ``services`` (health and reflection pass through):
    a domain error becomes its status, anything else INTERNAL (logged with its traceback), and
    success, failure (by code) and duration are counted per method."""

    def __init__(self, metrics: Metrics, services: tuple[str, ...], stall_s: float = 30.0):
        self.metrics = metrics
        self.prefixes = tuple(f"/{s}/" for s in services)
        self.stall_s = stall_s

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or not details.method.startswith(self.prefixes):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        deserializer = _lenient(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                self._stream(method, handler.stream_stream, bidi=True),
                request_deserializer=deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _failed(self, method: str, exc: Exception, context) -> None:
        code, message = grpc_status(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.error("%s failed", method, exc_info=exc)
        self.metrics.request_failure.labels(method, code.name).inc()
        retry_ms = getattr(exc, "retry_after_ms", None)
        pushback = (("grpc-retry-pushback-ms", str(retry_ms)),) if retry_ms is not None else ()
        await context.abort(code, message, trailing_metadata=pushback)

    def _done(self, method: str, t0: float) -> None:
        self.metrics.request_success.labels(method).inc()
        self.metrics.request_seconds.labels(method).observe(time.perf_counter() - t0)

    async def _malformed(self, method: str, context) -> None:
        self.metrics.request_failure.labels(method, grpc.StatusCode.INVALID_ARGUMENT.name).inc()
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {method} request message")

    def _unary(self, method: str, behaviour):
        async def call(request, context):
            if request is _MALFORMED:
                await self._malformed(method, context)
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

    def _stream(self, method: str, behaviour, bidi: bool = False):
        """Replies are written with a stall limit: a client that reads nothing for ``stall_s``
        (its flow-control window full) has its stream ended, and the work stops with it. ``bidi``:
        the request is a stream of messages, a malformed one fails the call where it is read."""

        async def call(request, context):
            if bidi:
                request = _checked(request, method)
            elif request is _MALFORMED:
                await self._malformed(method, context)
            t0 = time.perf_counter()
            try:
                async with contextlib.aclosing(behaviour(request, context)) as replies:
                    async for reply in replies:
                        try:
                            await asyncio.wait_for(context.write(reply), self.stall_s)
                        except asyncio.TimeoutError:
                            raise LimitExceeded(
                                f"stream ended: the client read nothing for {self.stall_s:g} s (stream stall limit)"
                            ) from None
                        except asyncio.CancelledError:
                            raise
                        except Exception:  # the client went away during the write (gRPC's batch error)
                            self.metrics.request_failure.labels(method, "CANCELLED").inc()
                            return
            except asyncio.CancelledError:
                self.metrics.request_failure.labels(method, "CANCELLED").inc()
                raise
            except Exception as exc:
                await self._failed(method, exc, context)
            self._done(method, t0)

        return call


_MALFORMED = object()


async def _checked(requests, method: str):
    async for r in requests:
        if r is _MALFORMED:
            raise InvalidArgument(f"malformed {method} request message")
        yield r


def _lenient(deserializer):
    """A request that does not parse reaches the handler as ``_MALFORMED`` (INVALID_ARGUMENT there),
    instead of failing inside gRPC with UNKNOWN and a Python exception text."""
    if deserializer is None:
        return None

    def parse(data: bytes):
        try:
            return deserializer(data)
        except Exception:
            return _MALFORMED

    return parse


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Every call but the open services (health) must carry ``authorization: Bearer <token>`` of one
    of the server's tokens (:class:`~seglabel_server.transport.auth.Tokens`). A refused call gets
    UNAUTHENTICATED and never reaches a handler; an accepted one runs with its token's best request
    class in :data:`~seglabel_server.transport.auth.CEILING`."""

    def __init__(
        self, token: Tokens, metrics: Metrics, open_services: tuple[str, ...] = ("grpc.health.v1.Health",)
    ):
        self.token = token
        self.metrics = metrics
        self.open = tuple(f"/{s}/" for s in open_services)

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(self.open):
            return handler
        given = ""
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value if isinstance(value, str) else value.decode(errors="replace")
        try:
            return _with_ceiling(handler, self.token.check(given))
        except Unauthenticated as exc:
            message = str(exc)
        method = details.method.rsplit("/", 1)[-1]

        async def deny(request, context):
            self.metrics.request_failure.labels(method, grpc.StatusCode.UNAUTHENTICATED.name).inc()
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        )
        for attr, make in kinds:
            if getattr(handler, attr) is not None:
                return make(
                    deny,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
        return handler


def _with_ceiling(handler, ceiling: int):
    """``handler`` whose unary or server-streaming behaviour (a coroutine function, or an async
    generator function when no other interceptor wrapped it) runs with :data:`CEILING` set."""
    if ceiling == CEILING.get() or handler is None:
        return handler
    for attr in ("unary_unary", "unary_stream", "stream_stream"):
        inner = getattr(handler, attr)
        if inner is None:
            continue
        if inspect.isasyncgenfunction(inner):

            async def streamed(request, context, inner=inner):
                CEILING.set(ceiling)
                async for reply in inner(request, context):
                    yield reply

            return handler._replace(**{attr: streamed})

        async def behaviour(request, context, inner=inner):
            CEILING.set(ceiling)
            return await inner(request, context)

        return handler._replace(**{attr: behaviour})
    return handler
