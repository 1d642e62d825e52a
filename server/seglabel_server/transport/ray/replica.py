"""A replica: the whole server (service, pipeline, scheduler, embedding cache) in a Ray actor, the
``Seglabel`` deployment. The ingress asks it for a servicer method or a gateway method by the method
itself (``calls.on``)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable

from ray import serve

from seglabel_server.errors import SeglabelError
from seglabel_server.service import SeglabelService
from seglabel_server.service.config import ServerConfig, apply_settings
from seglabel_server.transport.auth import CEILING
from seglabel_server.transport.grpc.interceptor import grpc_status
from seglabel_server.transport.grpc.servicer import SegmenterServicer
from seglabel_server.transport.http.gateway import GATEWAY_CALLS, LocalGateway
from seglabel_server.transport.ray.calls import pack
from seglabel_server.types import RequestContext

Caller = tuple[int, str]  # (the token's best request class, the fair-share key)
NOBODY: Caller = (0, "")

log = logging.getLogger(__name__)
# Ray Serve's own logger: its lines land in the replica's Serve log, with Ray's request id.
serve_log = logging.getLogger("ray.serve")
S = SegmenterServicer
# The unary methods a replica answers for the ingress (passed as these functions, not names).
UNARY = frozenset({S.Upload, S.Segment, S.EstimateDepth, S.ExtractText, S.GetServerInfo, S.CreateVocabulary,
                   S.GetVocabulary, S.ListVocabularies, S.DeleteVocabulary, S.AddExamples, S.RemoveExamples,
                   S.Relabel})  # fmt: skip


class _NoDeadline:
    """What the servicer asks of a gRPC context, for a call that arrived through Ray (the proxy
    enforces its own request_timeout_s); ``peer``: the caller's fair-share key as the ingress saw it."""

    def __init__(self, peer: str = ""):
        self._peer = peer

    def time_remaining(self):
        return None

    def peer(self) -> str:
        return self._peer


def _request_id() -> str:
    try:
        return serve.context._get_serve_request_context().request_id or "-"
    except Exception:  # outside a request (tests call methods directly)
        return "-"


class Replica:
    """One replica: the whole server (service, pipeline, scheduler, embedding cache) in a Ray actor.
    Each method answers ``(reply, replica id, error)``: a domain error is returned packed
    (``calls.pack``) and logged as one line, never raised (Ray would log its traceback)."""

    async def __init__(self, server: dict | None = None, pin_cpus: int = 0):  # type: ignore[misc]  # Ray awaits it
        ctx = serve.get_replica_context()
        if pin_cpus and ctx:
            log.info(
                "replica pinned to CPUs %s", pin_to_cpus(getattr(ctx.rank, "local_rank", 0) or 0, pin_cpus)
            )
        # The interactive lane's own sessions and lowered batch priority are off by default here:
        # with them, Ray's router sent every Relabel of tests/integration/test_ray.py to one of two
        # replicas on one node (not traced); args.server may turn them on.
        cfg = ServerConfig(port=0, interactive_lane=False)
        apply_settings(
            cfg, dict(server or {}), "the Ray application's args.server"
        )  # ConfigError, never an exit
        self.service = SeglabelService(cfg)
        if ctx:  # "<Ray replica id> <host>:<pid>"
            self.service.served_by = f"{ctx.replica_id.unique_id} {self.service.served_by}"
        self.servicer = SegmenterServicer(self.service)
        self.local = LocalGateway(self.service)
        t0 = time.perf_counter()
        await self.service.load()  # the replica starts (and is routed to) only once this is done
        log.info("replica %s SERVING after %.1fs (uploads: %s)", self.service.served_by,
                 time.perf_counter() - t0, self.service.images.files.describe())  # fmt: skip

    async def check_health(self) -> None:
        if not self.service.serving:
            raise RuntimeError(f"replica {self.service.served_by} is not serving")

    def _refused(self, what: str, exc: SeglabelError) -> tuple:
        code, details = grpc_status(exc)
        serve_log.info("request %s %s: %s %s", _request_id(), what, code.name, details)
        return None, self.service.served_by, pack(exc)

    async def call(self, method: Callable, request, caller: Caller = NOBODY):
        """A unary gRPC method of Segmenter (one of ``UNARY``: a SegmenterServicer method).
        ``caller``: (the token's best request class, the fair-share key), from the ingress."""
        if method not in UNARY:
            raise ValueError(f"not a unary method of Segmenter: {method!r}")
        CEILING.set(caller[0])
        try:
            reply = await method(self.servicer, request, _NoDeadline(caller[1]))
        except SeglabelError as exc:
            return self._refused(method.__name__, exc)
        return reply, self.service.served_by, None

    async def stream(self, request, caller: Caller = NOBODY):
        """StreamSegment's events; a domain error as the last item."""
        CEILING.set(caller[0])
        try:
            async for event in self.servicer.StreamSegment(request, _NoDeadline(caller[1])):
                yield event, self.service.served_by, None
        except SeglabelError as exc:
            yield self._refused("StreamSegment", exc)

    async def gateway(self, method: Callable, *args, caller: Caller = NOBODY):
        """A call of the HTTP routes (``gateway.RemoteGateway``): ``method``, one of LocalGateway's
        (``GATEWAY_CALLS``), run here with a RequestContext of its own, cancelled on the way out
        (whatever it queued is dropped: a cancelled call, or nothing left)."""
        if method not in GATEWAY_CALLS:
            raise ValueError(f"not a gateway call: {method!r}")
        ctx = RequestContext(ceiling=caller[0], share=caller[1])
        try:
            reply = await method(self.local, *args, ctx=ctx)
        except SeglabelError as exc:
            return self._refused(f"HTTP {method.__name__}", exc)
        finally:
            ctx.cancel()
        return reply, self.service.served_by, None

    async def events(self, params, file_id, data, caller: Caller = NOBODY):
        """A Segment request's stream of domain events (``service.segment_events``)."""
        ctx = RequestContext(ceiling=caller[0], share=caller[1])
        try:
            async for event in self.service.segment_events(params, file_id, data, ctx):
                yield event, self.service.served_by, None
        except SeglabelError as exc:
            yield self._refused("HTTP segment stream", exc)

    async def serving(self) -> bool:
        return self.service.serving


SeglabelReplica = serve.deployment(
    name="Seglabel", max_ongoing_requests=16, health_check_period_s=5, graceful_shutdown_timeout_s=30
)(Replica)


def pin_to_cpus(local_rank: int, n: int) -> list[int]:
    """Bind every thread of this process (and those it starts later) to ``n`` of the machine's
    cores, chosen by the replica's rank on its node, so that replicas do not share cores: Ray's
    ``num_cpus`` is only an accounting unit."""
    cores = sorted(os.sched_getaffinity(0))
    start = (local_rank * n) % len(cores)
    chosen = sorted({cores[(start + i) % len(cores)] for i in range(n)})
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task), chosen)
    return chosen
