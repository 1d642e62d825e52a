"""The HTTP routes on Ray Serve: the ingress deployment's :class:`RemoteGateway` sends each call to
a replica through Ray's deployment handle, as the gRPC methods do: a replica that dies is retried on
another (a stream only before its first event), domain errors come back as values (so Ray logs no
traceback for a NOT_FOUND) and are raised here as the same kind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

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
    return type(exc).__name__, str(exc), getattr(exc, "retry_after_ms", None)


def unpack(packed: tuple[str, str, int | None]) -> SeglabelError:
    name, message, retry_ms = packed
    cls = getattr(errors, name, None)
    exc = cls(message) if isinstance(cls, type) and issubclass(cls, SeglabelError) else SeglabelError(message)
    if retry_ms is not None:
        exc.retry_after_ms = retry_ms
    return exc


def lost(what: str) -> Unavailable:
    return Unavailable(f"{what}: no replica answered (replica lost); retry", retry_after_ms=1000)


class RemoteGateway:
    """:class:`~seglabel_server.transport.http.gateway.Gateway` over the replicas' ``invoke`` and
    ``events`` methods (``transport.ray.app.SeglabelReplica``)."""

    def __init__(self, replicas, max_image_bytes: int):
        self.replicas = replicas
        self.max_image_bytes = max_image_bytes
        self.metrics = Metrics()  # the HTTP counters of this ingress

    async def _invoke(self, name: str, *args):
        for attempt in range(ATTEMPTS):
            try:
                value, _, error = await self.replicas.invoke.remote(name, *args)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if replica_lost(exc):
                    if attempt + 1 < ATTEMPTS:
                        log.warning(
                            "%s: replica lost (%s), retrying on another", name, type(cause(exc)).__name__
                        )
                        continue
                    raise lost(name) from None
                raise cause(exc) from None
            if error is not None:
                raise unpack(error)
            return value
        raise lost(name)

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

    async def segment_events(self, params, file_id, data, ctx) -> AsyncIterator[object]:
        for attempt in range(ATTEMPTS):
            sent = 0
            try:
                async for event, _, error in self.replicas.options(stream=True).events.remote(
                    params, file_id, data
                ):
                    if error is not None:
                        raise unpack(error)
                    sent += 1
                    yield event
                return
            except (asyncio.CancelledError, SeglabelError):
                raise
            except Exception as exc:
                if replica_lost(exc):
                    if sent == 0 and attempt + 1 < ATTEMPTS:
                        log.warning("segment stream: replica lost before the first event, retrying")
                        continue
                    raise lost("segment stream") from None
                raise cause(exc) from None
