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
    """:class:`~seglabel_server.transport.http.gateway.Gateway` over the replicas' ``invoke`` and
    ``events`` methods (``transport.ray.app.SeglabelReplica``)."""

    def __init__(self, replicas, max_image_bytes: int):
        self.replicas = replicas
        self.max_image_bytes = max_image_bytes
        self.metrics = Metrics()  # the HTTP counters of this ingress

    async def _invoke(self, name: str, *args):
        value, _, error = await call_replica(lambda: self.replicas.invoke.remote(name, *args), name)
        if error is not None:
            raise unpack(error)
        return value

    async def serving(self) -> bool:
        try:
            return bool(await self._invoke("serving"))
        except Exception:
            return False

    async def info(self) -> dict:
        return await self._invoke("info")

    async def upload(self, data: bytes, filename: str) -> tuple[str, int, int]:
        return await self._invoke("upload", data, filename)

    async def segment(self, params, file_id, data, ctx):
        return await self._invoke("segment", params, file_id, data)

    async def estimate_depth(self, file_id, data, ctx):
        return await self._invoke("estimate_depth", file_id, data)

    async def extract_text(self, file_id, data, options, ctx):
        return await self._invoke("extract_text", file_id, data, options)

    async def vocabularies(self, op: str, *args):
        return await self._invoke("vocabularies", op, *args)

    async def relabel(self, request_id, params, ctx):
        return await self._invoke("relabel", request_id, params)

    async def segment_events(self, params, file_id, data, ctx) -> AsyncIterator[object]:
        events = stream_replica(
            lambda: self.replicas.options(stream=True).events.remote(params, file_id, data), "segment stream"
        )
        async with contextlib.aclosing(events):
            async for event, _, error in events:
                if error is not None:
                    raise unpack(error)
                yield event
