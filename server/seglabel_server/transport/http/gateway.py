"""What the HTTP app calls: the service's calls as coroutines, so that the same routes serve the
in-process service (:class:`LocalGateway`) and Ray Serve replicas (``transport.ray.gateway``).
Every call is a method (a typo fails in the type checker, not on one route at run time) and takes
the request's context last (cancellation, deadline), whether or not it uses it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Protocol

from seglabel_server.metrics import Metrics
from seglabel_server.service.tracking import TrackAnswer, TrackFrame, TrackOptions
from seglabel_server.service.vocabularies import LabelIn
from seglabel_server.types import (
    DepthResult,
    ExampleIn,
    RequestContext,
    SegmentOptions,
    SegmentResult,
    TextOptions,
)
from seglabel_server.vocabulary import Vocabulary

Described = tuple[Vocabulary, list]  # a vocabulary and its MULTI thresholds per label


class Gateway(Protocol):
    """The service as the HTTP routes see it. Errors are the domain's (``errors.py``)."""

    metrics: Metrics
    max_image_bytes: int

    async def serving(self, ctx: RequestContext | None = None) -> bool: ...

    async def info(self, ctx: RequestContext | None = None) -> dict: ...

    async def upload(
        self, data: bytes, filename: str, ctx: RequestContext | None = None
    ) -> tuple[str, int, int]: ...

    async def segment(self, params: SegmentOptions, file_id: str | None, data: bytes | None,
                      ctx: RequestContext | None = None) -> SegmentResult: ...  # fmt: skip

    def segment_events(self, params: SegmentOptions, file_id: str | None, data: bytes | None,
                       ctx: RequestContext | None = None) -> AsyncGenerator[object, None]: ...  # fmt: skip

    async def estimate_depth(self, file_id: str | None, data: bytes | None,
                             ctx: RequestContext | None = None) -> tuple[DepthResult, dict]: ...  # fmt: skip

    async def extract_text(self, file_id: str | None, data: bytes | None, options: TextOptions | None,
                           ctx: RequestContext | None = None) -> tuple: ...  # fmt: skip

    async def relabel(
        self, request_id: str, params: SegmentOptions, ctx: RequestContext | None = None
    ) -> tuple: ...

    async def create_vocabulary(self, name: str, labels: list[LabelIn], replace: bool, alpha: float, beta: float,
                                ctx: RequestContext | None = None) -> Described: ...  # fmt: skip

    async def get_vocabulary(self, name: str, ctx: RequestContext | None = None) -> Described: ...

    async def ensure_labels(
        self, name: str, labels: list[str], ctx: RequestContext | None = None
    ) -> Described: ...

    async def list_vocabularies(self, ctx: RequestContext | None = None) -> list[Vocabulary]: ...

    async def delete_vocabulary(self, name: str, ctx: RequestContext | None = None) -> bool: ...

    async def add_examples(self, name: str, label: str, examples: list[ExampleIn],
                           ctx: RequestContext | None = None) -> tuple[Described, list[str]]: ...  # fmt: skip

    async def remove_examples(self, name: str, label: str, ids: list[str], remove_label: bool,
                              ctx: RequestContext | None = None) -> Described: ...  # fmt: skip

    async def track(self, options: TrackOptions, frames: AsyncIterator[TrackFrame],
                    ctx: RequestContext | None = None) -> AsyncIterator[TrackAnswer]:  # fmt: skip
        """A tracking session's answers for ``frames`` (checked and opened when awaited)."""
        ...


class LocalGateway:
    """The in-process service (the server's own loop, or a Ray replica's): calls it directly."""

    def __init__(self, service):
        self.service = service
        self.metrics = service.metrics
        self.max_image_bytes = service.cfg.max_image_bytes

    async def serving(self, ctx=None) -> bool:
        return self.service.serving

    async def info(self, ctx=None) -> dict:
        return self.service.info()

    async def upload(self, data, filename, ctx=None):
        return await asyncio.to_thread(self.service.upload, data, filename)

    async def segment(self, params, file_id, data, ctx=None):
        return await self.service.segment(params, file_id, data, ctx or RequestContext())

    def segment_events(self, params, file_id, data, ctx=None):
        return self.service.segment_events(params, file_id, data, ctx or RequestContext())

    async def estimate_depth(self, file_id, data, ctx=None):
        return await self.service.estimate_depth(file_id, data, ctx or RequestContext())

    async def extract_text(self, file_id, data, options, ctx=None):
        return await self.service.extract_text(file_id, data, options, ctx or RequestContext())

    async def relabel(self, request_id, params, ctx=None):
        return await self.service.relabel(request_id, params, ctx or RequestContext())

    async def create_vocabulary(self, name, labels, replace, alpha, beta, ctx=None):
        return await self.service.vocabularies.create(name, labels, replace, alpha, beta)

    async def get_vocabulary(self, name, ctx=None):
        return await self.service.vocabularies.get(name, ctx or RequestContext())

    async def ensure_labels(self, name, labels, ctx=None):
        return await self.service.vocabularies.ensure_labels(name, labels)

    async def list_vocabularies(self, ctx=None):
        return await self.service.vocabularies.names()

    async def delete_vocabulary(self, name, ctx=None):
        return await self.service.vocabularies.delete(name)

    async def add_examples(self, name, label, examples, ctx=None):
        return await self.service.vocabularies.add_examples(name, label, examples, ctx or RequestContext())

    async def remove_examples(self, name, label, ids, remove_label, ctx=None):
        return await self.service.vocabularies.remove_examples(name, label, ids, remove_label)

    async def track(self, options, frames, ctx=None):
        answers = await self.service.tracking.open(options, ctx or RequestContext())
        return answers(frames)


# The calls a Ray replica answers for the ingress's RemoteGateway (passed as these functions, not names).
GATEWAY_CALLS = frozenset(
    getattr(LocalGateway, name)
    for name in vars(Gateway)
    if not name.startswith("_")
    and callable(getattr(Gateway, name))
    and name not in ("segment_events", "track")
)
