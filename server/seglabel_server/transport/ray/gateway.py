"""The HTTP routes on Ray Serve: the ingress deployment's :class:`RemoteGateway` sends each call to
a replica through Ray's deployment handle, as the gRPC methods do: a replica that dies is retried on
another (a stream only before its first event), domain errors come back as values (so Ray logs no
traceback for a NOT_FOUND) and are raised here as the same kind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from ray.exceptions import RayActorError, RayTaskError

from seglabel_server import errors
from seglabel_server.errors import SeglabelError, Unavailable
from seglabel_server.metrics import Metrics
from seglabel_server.transport.http.gateway import LocalGateway

log = logging.getLogger(__name__)

# A replica that dies (crash, OOM kill, node lost) or cannot be reached: the call is retried on
# another one, and if none answers, UNAVAILABLE (which clients retry too).
ATTEMPTS = 3


def cause(exc: BaseException) -> BaseException:
    """What a replica raised, out of the RayTaskError the handle wraps it in."""
    return exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc


def replica_lost(exc: BaseException) -> bool:
    return isinstance(cause(exc), RayActorError)


def pack(exc: SeglabelError) -> tuple[str, str, int | None]:
    """A domain error as a plain value that crosses Ray unchanged (its kind, message, pushback)."""
    return type(exc).__name__, str(exc), exc.retry_after_ms


def unpack(packed: tuple[str, str, int | None]) -> SeglabelError:
    name, message, retry_ms = packed
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SeglabelError)):
        cls = SeglabelError
    return cls(message, retry_ms)


def lost(what: str) -> Unavailable:
    return Unavailable(f"{what}: no replica answered (replica lost); retry", retry_after_ms=1000)


async def call_replica(start: Callable[[], Awaitable], what: str):
    """``await start()`` (a call on a deployment handle), started again on another replica when
    the one that took it is lost, at most ``ATTEMPTS`` times; then :func:`lost`. Anything else a
    replica raised is raised as it is."""
    for attempt in range(ATTEMPTS):
        try:
            return await start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not replica_lost(exc):
                raise cause(exc) from None
            if attempt + 1 == ATTEMPTS:
                raise lost(what) from None
            log.warning("%s: replica lost (%s), retrying on another", what, type(cause(exc)).__name__)
    raise lost(what)


async def stream_replica(start: Callable[[], AsyncIterator], what: str) -> AsyncIterator:
    """The items of ``start()`` (a streaming call on a deployment handle); a replica lost before
    the first item is retried on another, as :func:`call_replica`; after it, :func:`lost`."""
    for attempt in range(ATTEMPTS):
        sent = 0
        try:
            async for item in start():
                sent += 1
                yield item
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not replica_lost(exc):
                raise cause(exc) from None
            if sent or attempt + 1 == ATTEMPTS:
                raise lost(what) from None
            log.warning(
                "%s: replica lost (%s) before the first event, retrying", what, type(cause(exc)).__name__
            )


class RemoteGateway:
    """:class:`~seglabel_server.transport.http.gateway.Gateway` over the replicas
    (``transport.ray.app.SeglabelReplica``): each call is the in-process gateway's method of the same
    name, run on a replica (``SeglabelReplica.gateway``); a stream is its ``events``."""

    def __init__(self, replicas, max_image_bytes: int):
        self.replicas = replicas
        self.max_image_bytes = max_image_bytes
        self.metrics = Metrics()  # the HTTP counters of this ingress

    async def _call(self, method: Callable, *args):
        """``method`` (a LocalGateway method) with ``args`` on a replica, which gives it a
        RequestContext of its own."""
        value, _, error = await call_replica(lambda: self.replicas.gateway.remote(method, *args), method.__name__)
        if error is not None:
            raise unpack(error)
        return value

    async def serving(self, ctx=None) -> bool:
        try:
            return bool(await self._call(LocalGateway.serving))
        except Exception:
            return False

    async def info(self, ctx=None) -> dict:
        return await self._call(LocalGateway.info)

    async def upload(self, data, filename, ctx=None):
        return await self._call(LocalGateway.upload, data, filename)

    async def segment(self, params, file_id, data, ctx=None):
        return await self._call(LocalGateway.segment, params, file_id, data)

    async def estimate_depth(self, file_id, data, ctx=None):
        return await self._call(LocalGateway.estimate_depth, file_id, data)

    async def extract_text(self, file_id, data, options, ctx=None):
        return await self._call(LocalGateway.extract_text, file_id, data, options)

    async def relabel(self, request_id, params, ctx=None):
        return await self._call(LocalGateway.relabel, request_id, params)

    async def create_vocabulary(self, name, labels, replace, alpha, beta, ctx=None):
        return await self._call(LocalGateway.create_vocabulary, name, labels, replace, alpha, beta)

    async def get_vocabulary(self, name, ctx=None):
        return await self._call(LocalGateway.get_vocabulary, name)

    async def list_vocabularies(self, ctx=None):
        return await self._call(LocalGateway.list_vocabularies)

    async def delete_vocabulary(self, name, ctx=None):
        return await self._call(LocalGateway.delete_vocabulary, name)

    async def add_examples(self, name, label, examples, ctx=None):
        return await self._call(LocalGateway.add_examples, name, label, examples)

    async def remove_examples(self, name, label, ids, remove_label, ctx=None):
        return await self._call(LocalGateway.remove_examples, name, label, ids, remove_label)

    async def segment_events(self, params, file_id, data, ctx=None) -> AsyncIterator[object]:
        events = stream_replica(
            lambda: self.replicas.options(stream=True).events.remote(params, file_id, data), "segment stream"
        )
        async with contextlib.aclosing(events):
            async for event, _, error in events:
                if error is not None:
                    raise unpack(error)
                yield event
