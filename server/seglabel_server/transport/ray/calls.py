"""Calls from the ingress to a replica through Ray's deployment handle, for the gRPC methods and the
HTTP routes alike: a replica that dies is retried on another (a stream only before its first
event), domain errors come back as values (so Ray logs no traceback for a NOT_FOUND) and are
raised here as the same kind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

from ray.exceptions import RayActorError, RayTaskError

from seglabel_server import errors
from seglabel_server.errors import SeglabelError, Unavailable

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


async def stream_replica(start: Callable[[], AsyncIterator], what: str) -> AsyncGenerator:
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


def on(handle, method: Callable, stream: bool = False):
    """``handle``'s call of ``method``, a method of the replica class (``Replica.gateway``): a typo
    fails in the type checker, where a name on Ray's handle would fail on one request at run time.
    ``stream``: a streaming call (Ray's ``options(stream=True)``)."""
    return getattr(handle.options(stream=True) if stream else handle, method.__name__)
