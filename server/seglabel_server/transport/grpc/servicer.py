"""gRPC servicer: protobuf in, one service call, protobuf out. Failures and request metrics are the
interceptor's (``interceptor.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb
from seglabel_api.pb.seglabel.v1 import seglabel_pb2_grpc as pb_grpc

from seglabel_server.service import SeglabelService
from seglabel_server.transport.auth import CEILING
from seglabel_server.transport.grpc import convert
from seglabel_server.types import RequestContext


def _context_for(context: grpc.aio.ServicerContext) -> RequestContext:
    """The call's context: its deadline, its token's best class, its connection as fair-share key."""
    ctx = RequestContext(ceiling=CEILING.get(), share=context.peer() or "")
    remaining = context.time_remaining()
    if remaining is not None:
        ctx.deadline = time.monotonic() + remaining
    return ctx


class SegmenterServicer(pb_grpc.SegmenterServicer):
    def __init__(self, service: SeglabelService):
        self.service = service

    async def Upload(self, request: pb.UploadRequest, context) -> pb.UploadResponse:
        file_id, w, h = await asyncio.to_thread(self.service.upload, request.image, request.filename)
        return pb.UploadResponse(file_id=file_id, width=w, height=h, filename=request.filename)

    async def Segment(self, request: pb.SegmentRequest, context) -> pb.SegmentResponse:
        ctx = _context_for(context)
        try:
            result = await self.service.segment(
                convert.params_from_pb(request), request.file_id or None, request.image or None, ctx
            )
        finally:
            ctx.cancel()  # anything of this request still queued is dropped
        return convert.result_to_pb(result)

    async def EstimateDepth(self, request: pb.EstimateDepthRequest, context) -> pb.EstimateDepthResponse:
        ctx = _context_for(context)
        try:
            depth, timings = await self.service.estimate_depth(
                request.file_id or None, request.image or None, ctx
            )
        finally:
            ctx.cancel()
        return convert.depth_response_to_pb(depth, timings)

    async def ExtractText(self, request: pb.ExtractTextRequest, context) -> pb.ExtractTextResponse:
        ctx = _context_for(context)
        try:
            text, (w, h), timings = await self.service.extract_text(
                request.file_id or None,
                request.image or None,
                convert.text_options_from_pb(request.options),
                ctx,
            )
        finally:
            ctx.cancel()
        return convert.text_response_to_pb(text, w, h, timings)

    async def GetServerInfo(self, request, context) -> pb.ServerInfo:
        return convert.info_to_pb(self.service.info())

    async def CreateVocabulary(self, request: pb.CreateVocabularyRequest, context) -> pb.Vocabulary:
        vocab, thresholds = await self.service.vocabularies.create(
            request.name,
            convert.labels_in_from_pb(request.labels),
            request.replace,
            request.alpha,
            request.beta,
        )
        return convert.vocabulary_to_pb(vocab, thresholds)

    async def GetVocabulary(self, request: pb.GetVocabularyRequest, context) -> pb.Vocabulary:
        return convert.vocabulary_to_pb(
            *await self.service.vocabularies.get(request.name, _context_for(context))
        )

    async def ListVocabularies(self, request, context) -> pb.ListVocabulariesResponse:
        vocabs = await self.service.vocabularies.names()
        return pb.ListVocabulariesResponse(vocabularies=[convert.vocabulary_summary_to_pb(v) for v in vocabs])

    async def DeleteVocabulary(
        self, request: pb.DeleteVocabularyRequest, context
    ) -> pb.DeleteVocabularyResponse:
        return pb.DeleteVocabularyResponse(deleted=await self.service.vocabularies.delete(request.name))

    async def AddExamples(self, request: pb.AddExamplesRequest, context) -> pb.AddExamplesResponse:
        ctx = _context_for(context)
        try:
            (vocab, thresholds), ids = await self.service.vocabularies.add_examples(
                request.vocabulary, request.label, [convert.example_from_pb(e) for e in request.examples], ctx
            )
        finally:
            ctx.cancel()
        return pb.AddExamplesResponse(vocabulary=convert.vocabulary_to_pb(vocab, thresholds), example_ids=ids)

    async def RemoveExamples(self, request: pb.RemoveExamplesRequest, context) -> pb.Vocabulary:
        return convert.vocabulary_to_pb(
            *await self.service.vocabularies.remove_examples(
                request.vocabulary, request.label, list(request.example_ids), request.remove_label
            )
        )

    async def Relabel(self, request: pb.RelabelRequest, context) -> pb.RelabelResponse:
        ctx = _context_for(context)
        labels, mode, timings = await self.service.relabel(
            request.request_id, convert.relabel_params_from_pb(request), ctx
        )
        return convert.relabel_to_pb(request.request_id, labels, mode, timings)

    async def StreamSegment(self, request: pb.SegmentRequest, context):
        """Events while the work runs; a client that goes away cancels the work (the generator is
        closed, and with it the service's stream and everything the request queued)."""
        events = self.service.segment_events(
            convert.params_from_pb(request),
            request.file_id or None,
            request.image or None,
            _context_for(context),
        )
        async with contextlib.aclosing(events):
            async for ev in events:
                yield convert.event_to_pb(ev)

    async def Track(self, requests, context):
        """A tracking session: the first message opens it, every later one is a frame; one reply
        per frame answered. The session ends with the stream (its state freed)."""
        ctx = _context_for(context)
        first = await anext(aiter(requests), None)
        if first is None:
            return
        options = convert.track_options_from_pb(first)

        async def frames():
            async for r in requests:
                yield convert.track_frame_from_pb(r)

        answers = await self.service.tracking.open(options, ctx)
        async with contextlib.aclosing(answers(frames())) as it:
            async for answer in it:
                yield convert.track_answer_to_pb(answer)
