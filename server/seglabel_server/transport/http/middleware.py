"""The HTTP edge around the routes: error kinds to statuses with a JSON body, the request body limit,
per-route request metrics, and a request's work cancelled when its client goes away."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.routing import Match

from seglabel_server.errors import (
    Cancelled,
    ErrorKind,
    InvalidArgument,
    LimitExceeded,
    SeglabelError,
    error_kind,
)
from seglabel_server.types import RequestContext

HTTP_STATUS = {
    ErrorKind.INVALID: 400,
    ErrorKind.UNAUTHENTICATED: 401,
    ErrorKind.PERMISSION: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONFLICT: 409,
    ErrorKind.PRECONDITION: 412,
    ErrorKind.OVER_LIMIT: 429,  # a full server or queue; a request over a size limit is 413
    ErrorKind.CANCELLED: 499,
    ErrorKind.INTERNAL: 500,
    ErrorKind.NOT_SERVED: 501,
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.DEADLINE: 504,
}


def error_response(exc: BaseException) -> JSONResponse:
    kind, message = error_kind(exc)
    status = 413 if isinstance(exc, LimitExceeded) else HTTP_STATUS[kind]
    if kind == ErrorKind.INTERNAL and not isinstance(exc, SeglabelError):
        message = f"internal error ({type(exc).__name__})"  # never a stack trace or server paths
    retry_ms = getattr(exc, "retry_after_ms", None)
    headers = {"Retry-After": str(max(1, -(-retry_ms // 1000)))} if retry_ms else None
    return JSONResponse(
        {"error": {"code": kind.value, "message": message}}, status_code=status, headers=headers
    )


class BodyLimit:
    """ASGI middleware: a request body longer than ``limit`` bytes is refused with 413 as soon as
    it passes the limit (Content-Length first, then the bytes as they arrive); the app then reads
    the body it was given."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_big = LimitExceeded(f"request body over the limit of {self.limit} bytes")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await error_response(too_big)(scope, receive, send)
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limit:
                return await error_response(too_big)(scope, receive, send)
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, given = b"".join(chunks), False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the client to disconnect

        await self.app(scope, replay, send)


async def multipart_image(request: Request, what: str = "a file"):
    """(the multipart form, its ``image`` file's bytes, that file's name); InvalidArgument without it."""
    form = await request.form()
    image = form.get("image")
    if image is None or not hasattr(image, "read"):
        raise InvalidArgument(f"multipart field 'image' ({what}) is required")
    return form, await image.read(), str(getattr(image, "filename", "") or "")


def request_context(request: Request) -> RequestContext:
    """A route's request context: its token's best class (set by the auth middleware) and its
    client's connection as the fair-share key."""
    client = request.client
    return RequestContext(
        ceiling=getattr(request.state, "ceiling", 0),
        share=f"http:{client.host}:{client.port}" if client else "http",
    )


async def until_disconnected(request: Request, ctx: RequestContext, work, poll_s: float = 0.2):
    """Await ``work`` (a service call on ``ctx``); if the HTTP client goes away first, cancel the
    request's work (queued batches, CPU stages) as a cancelled gRPC call does. ``ctx`` is cancelled
    when this returns either way (it owns nothing after the answer)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise Cancelled("the HTTP client disconnected")
    finally:
        ctx.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


class HttpMetrics:
    """ASGI middleware: counts every answered request by its route's template (file ids folded)
    and status in ``seglabel_http_requests``."""

    def __init__(self, app, fastapi_app: FastAPI, metrics):
        self.app, self.routes, self.metrics = app, fastapi_app.routes, metrics

    def route(self, scope) -> str:
        for r in self.routes:
            if r.matches(scope)[0] == Match.FULL:
                return getattr(r, "path", scope["path"])
        return "(unrouted)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = [0]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.http_requests.labels(self.route(scope), str(status[0] or 499)).inc()
