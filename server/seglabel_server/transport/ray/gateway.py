"""The HTTP routes on Ray Serve: the ingress deployment's :class:`RemoteGateway` sends each call to
a replica (``calls``), as the gRPC methods do."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable

from seglabel_server.errors import CapabilityUnavailable
from seglabel_server.metrics import Metrics
from seglabel_server.transport.http.gateway import LocalGateway
from seglabel_server.transport.ray.calls import call_replica, on, stream_replica, unpack
from seglabel_server.transport.ray.replica import Replica


class RemoteGateway:
    """:class:`~seglabel_server.transport.http.gateway.Gateway` over the replicas
    (``transport.ray.replica.Replica``): each call is the in-process gateway's method of the same
    name, run on a replica (``Replica.gateway``); a stream is its ``events``."""

    def __init__(self, replicas, max_image_bytes: int):
        self.replicas = replicas
        self.max_image_bytes = max_image_bytes
        self.metrics = Metrics()  # the HTTP counters of this ingress

    async def _call(self, method: Callable, *args, ctx=None):
        """``method`` (a LocalGateway method) with ``args`` on a replica, which gives it a
        RequestContext of its own with the route's caller (its token's class, its fair-share key)."""
        value, _, error = await call_replica(
            lambda: on(self.replicas, Replica.gateway).remote(method, *args, caller=_caller(ctx)),
            method.__name__,
        )
        if error is not None:
            raise unpack(error)
        return value

    async def serving(self, ctx=None) -> bool:
        try:
            return bool(await self._call(LocalGateway.serving))
        except Exception:
            return False

    async def info(self, ctx=None) -> dict:
        return await self._call(LocalGateway.info, ctx=ctx)

    async def upload(self, data, filename, ctx=None):
        return await self._call(LocalGateway.upload, data, filename, ctx=ctx)

    async def segment(self, params, file_id, data, ctx=None):
        return await self._call(LocalGateway.segment, params, file_id, data, ctx=ctx)

    async def estimate_depth(self, file_id, data, ctx=None):
        return await self._call(LocalGateway.estimate_depth, file_id, data, ctx=ctx)

    async def extract_text(self, file_id, data, options, ctx=None):
        return await self._call(LocalGateway.extract_text, file_id, data, options, ctx=ctx)

    async def relabel(self, request_id, params, ctx=None):
        return await self._call(LocalGateway.relabel, request_id, params, ctx=ctx)

    async def create_vocabulary(self, name, labels, replace, alpha, beta, ctx=None):
        return await self._call(LocalGateway.create_vocabulary, name, labels, replace, alpha, beta, ctx=ctx)

    async def get_vocabulary(self, name, ctx=None):
        return await self._call(LocalGateway.get_vocabulary, name, ctx=ctx)

    async def list_vocabularies(self, ctx=None):
        return await self._call(LocalGateway.list_vocabularies, ctx=ctx)

    async def delete_vocabulary(self, name, ctx=None):
        return await self._call(LocalGateway.delete_vocabulary, name, ctx=ctx)

    async def ensure_labels(self, name, labels, ctx=None):
        return await self._call(LocalGateway.ensure_labels, name, labels, ctx=ctx)

    async def add_examples(self, name, label, examples, ctx=None):
        return await self._call(LocalGateway.add_examples, name, label, examples, ctx=ctx)

    async def remove_examples(self, name, label, ids, remove_label, ctx=None):
        return await self._call(LocalGateway.remove_examples, name, label, ids, remove_label, ctx=ctx)

    async def track(self, options, frames, ctx=None):
        raise CapabilityUnavailable(
            "tracking is not served through Ray Serve yet: a session's state lives on one replica, and "
            "this ingress does not keep a session on one; use a server's own gRPC Track or HTTP /track"
        )

    async def segment_events(self, params, file_id, data, ctx=None) -> AsyncGenerator[object, None]:
        events = stream_replica(
            lambda: on(self.replicas, Replica.events, stream=True).remote(
                params, file_id, data, caller=_caller(ctx)
            ),
            "segment stream",
        )
        async with contextlib.aclosing(events):
            async for event, _, error in events:
                if error is not None:
                    raise unpack(error)
                yield event


def _caller(ctx) -> tuple[int, str]:
    """A route's request context as the replica's ``caller``: (the token's best class, the fair-share key)."""
    return (ctx.ceiling, ctx.share) if ctx is not None else (0, "")
