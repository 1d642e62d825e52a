"""gRPC servicer: protobuf in, one service call, protobuf out. Errors are mapped in one place."""

from __future__ import annotations

import asyncio
import functools
import logging
import time

import grpc

from seglabel_server import convert
from seglabel_server.errors import grpc_status
from seglabel_server.pb.seglabel.v1 import seglabel_pb2 as pb
from seglabel_server.pb.seglabel.v1 import seglabel_pb2_grpc as pb_grpc
from seglabel_server.service import SeglabelService
from seglabel_server.types import Done, RequestContext

log = logging.getLogger(__name__)


def _context_for(context: grpc.aio.ServicerContext) -> RequestContext:
    ctx = RequestContext()
    remaining = context.time_remaining()
    if remaining is not None:
        ctx.deadline = time.monotonic() + remaining
    return ctx


class SegmenterServicer(pb_grpc.SegmenterServicer):
    def __init__(self, service: SeglabelService):
        self.service = service
        self.metrics = service.metrics

    def _fail(self, method: str, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        code, message = grpc_status(exc)
        if code == grpc.StatusCode.INTERNAL:
            log.exception("%s failed", method, exc_info=exc)
        self.metrics.request_failure.labels(method, code.name).inc()
        return code, message

    @staticmethod
    def _unary(method):
        @functools.wraps(method)
        async def wrapper(self, request, context):
            t0 = time.perf_counter()
            try:
                reply = await method(self, request, context)
            except asyncio.CancelledError:
                self.metrics.request_failure.labels(method.__name__, "CANCELLED").inc()
                raise
            except Exception as exc:
                await context.abort(*self._fail(method.__name__, exc))
            self.metrics.request_success.labels(method.__name__).inc()
            self.metrics.request_seconds.labels(method.__name__).observe(time.perf_counter() - t0)
            return reply

        return wrapper

    @_unary
    async def Upload(self, request: pb.UploadRequest, context) -> pb.UploadResponse:
        file_id, w, h = await asyncio.to_thread(self.service.upload, request.image)
        return pb.UploadResponse(file_id=file_id, width=w, height=h)

    @_unary
    async def Segment(self, request: pb.SegmentRequest, context) -> pb.SegmentResponse:
        ctx = _context_for(context)
        try:
            result = await self.service.segment(
                convert.params_from_pb(request), request.file_id or None, request.image or None, ctx
            )
        finally:
            ctx.cancel()  # anything of this request still queued is dropped
        return convert.result_to_pb(result)

    @_unary
    async def GetServerInfo(self, request, context) -> pb.ServerInfo:
        return convert.info_to_pb(self.service.info())

    async def StreamSegment(self, request: pb.SegmentRequest, context):
        """Events while the work runs; a client that goes away cancels the work (the generator is
        cancelled, and with it the pipeline task and everything it queued)."""
        method = "StreamSegment"
        t0 = time.perf_counter()
        ctx = _context_for(context)
        events: asyncio.Queue = asyncio.Queue()

        async def emit(ev):
            await events.put(ev)

        async def work():
            await self.service.segment(
                convert.params_from_pb(request), request.file_id or None, request.image or None, ctx, emit
            )

        task = asyncio.create_task(work())
        task.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while True:
                ev = await events.get()
                if ev is None:
                    break
                yield convert.event_to_pb(ev)
                if isinstance(ev, Done):
                    break
            await task
        except asyncio.CancelledError:
            self.metrics.request_failure.labels(method, "CANCELLED").inc()
            raise
        except Exception as exc:
            await context.abort(*self._fail(method, exc))
        finally:
            ctx.cancel()
            if not task.done():
                task.cancel()
        self.metrics.request_success.labels(method).inc()
        self.metrics.request_seconds.labels(method).observe(time.perf_counter() - t0)
