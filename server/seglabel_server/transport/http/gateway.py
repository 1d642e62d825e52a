"""What the HTTP app calls: the service's calls as coroutines, so that the same routes serve the
in-process service (:class:`LocalGateway`) and Ray Serve replicas (``transport.ray.gateway``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from seglabel_server.metrics import Metrics
from seglabel_server.types import RequestContext, SegmentOptions, TextOptions


class Gateway(Protocol):
    """The service as the HTTP routes see it. Errors are the domain's (``errors.py``)."""

    metrics: Metrics
    max_image_bytes: int

    async def serving(self) -> bool: ...

    async def info(self) -> dict: ...

    async def upload(self, data: bytes, filename: str) -> tuple[str, int, int]: ...

    async def segment(
        self, params: SegmentOptions, file_id: str | None, data: bytes | None, ctx: RequestContext
    ): ...

    def segment_events(
        self, params: SegmentOptions, file_id: str | None, data: bytes | None, ctx: RequestContext
    ) -> AsyncIterator[object]: ...

    async def estimate_depth(self, file_id: str | None, data: bytes | None, ctx: RequestContext): ...

    async def extract_text(
        self, file_id: str | None, data: bytes | None, options: TextOptions | None, ctx: RequestContext
    ): ...

    async def vocabularies(self, op: str, *args):
        """``service.vocabularies.<op>(*args)`` (create, get, names, delete, add_examples,
        remove_examples); a RequestContext argument is the call's own."""

    async def relabel(self, request_id: str, params: SegmentOptions, ctx: RequestContext): ...


class LocalGateway:
    """The in-process service (the server's own loop): calls it directly."""

    def __init__(self, service):
        self.service = service
        self.metrics = service.metrics
        self.max_image_bytes = service.cfg.max_image_bytes

    async def serving(self) -> bool:
        return self.service.ready.is_set() and not self.service.draining

    async def info(self) -> dict:
        return self.service.info()

    async def upload(self, data: bytes, filename: str) -> tuple[str, int, int]:
        return await asyncio.to_thread(self.service.upload, data, filename)

    def segment(self, params, file_id, data, ctx):
        return self.service.segment(params, file_id, data, ctx)

    def segment_events(self, params, file_id, data, ctx):
        return self.service.segment_events(params, file_id, data, ctx)

    def estimate_depth(self, file_id, data, ctx):
        return self.service.estimate_depth(file_id, data, ctx)

    def extract_text(self, file_id, data, options, ctx):
        return self.service.extract_text(file_id, data, options, ctx)

    async def vocabularies(self, op: str, *args):
        return await vocabulary_call(self.service, op, *args)

    def relabel(self, request_id, params, ctx):
        return self.service.relabel(request_id, params, ctx)


VOCABULARY_CALLS = ("create", "get", "names", "delete", "add_examples", "remove_examples")


async def vocabulary_call(service, op: str, *args):
    """One of the service's vocabulary calls by name (the HTTP routes' one entry, here and on a Ray
    replica); calls that embed or load get a RequestContext of their own."""
    if op not in VOCABULARY_CALLS:
        raise ValueError(f"not a vocabulary call: {op}")
    if op in ("get", "add_examples"):
        args = (*args, RequestContext())
    return await getattr(service.vocabularies, op)(*args)
