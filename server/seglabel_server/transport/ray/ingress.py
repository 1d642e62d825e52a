"""The ingress deployment: what Ray Serve's proxies call (the gRPC methods of
``seglabel.v1.Segmenter`` and ``grpc.health.v1`` ``Check``; the HTTP/JSON routes and the web page),
routing each call to a replica through Ray's deployment handle. A replica is asked for a servicer
method or a gateway method by the method itself (a typo fails in the type checker)."""

from __future__ import annotations

import contextlib
import logging
import os

from google.protobuf import message_factory
from grpc_health.v1 import health_pb2
from ray import serve
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb

from seglabel_server.errors import SeglabelError
from seglabel_server.service.config import ServerConfig, apply_settings
from seglabel_server.transport.auth import read_tokens
from seglabel_server.transport.grpc.interceptor import grpc_status
from seglabel_server.transport.grpc.servicer import SegmenterServicer
from seglabel_server.transport.http import labelstudio
from seglabel_server.transport.http.app import create_app
from seglabel_server.transport.ray.calls import call_replica, on, stream_replica, unpack
from seglabel_server.transport.ray.gateway import RemoteGateway
from seglabel_server.transport.ray.replica import Replica

log = logging.getLogger(__name__)
REPLICA_HEADER = "seglabel-replica"
S = SegmenterServicer
_METHODS = pb.DESCRIPTOR.services_by_name["Segmenter"].methods_by_name


def _empty_reply(method) -> object:
    """An empty answer of ``method``'s type: sent with the error status set on the context."""
    return message_factory.GetMessageClass(_METHODS[method.__name__].output_type)()


@serve.deployment(name="SeglabelIngress", max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0})
@serve.ingress()
class SeglabelIngress:
    """What Ray Serve's proxies call: the ``seglabel.v1.Segmenter`` methods and ``grpc.health.v1``
    ``Check`` (gRPC proxy), and the HTTP/JSON routes and web page (HTTP proxy, the FastAPI app of
    ``transport.http``). Holds no model; routes each call to a replica through Ray's deployment
    handle (Ray picks the replica), turns a replica's death into a retry on another one (before a
    stream's first event) or UNAVAILABLE, domain errors into their status codes (set on the
    context, not raised), checks the bearer token when one is configured, and names the replica
    that answered in the trailing metadata ``seglabel-replica``."""

    def __init__(self, replicas, server: dict | None = None):
        self.replicas = replicas
        cfg = ServerConfig()
        apply_settings(cfg, dict(server or {}), "the Ray application's args.server")
        self.token = read_tokens(cfg.auth_token_file)
        self.label_studio = labelstudio.settings_of(cfg, os.environ)
        self.gateway = RemoteGateway(replicas, cfg.max_image_bytes)

    def __serve_build_asgi_app__(self):
        asgi, _ = create_app(self.gateway, self.token, self.label_studio)
        return asgi

    @staticmethod
    def _fail(grpc_context, exc: SeglabelError) -> None:
        code, details = grpc_status(exc)
        if grpc_context is not None:
            grpc_context.set_code(code)
            grpc_context.set_details(details)
            pushback = exc.retry_after_ms
            if pushback:
                grpc_context.set_trailing_metadata([("grpc-retry-pushback-ms", str(int(pushback)))])

    def _authorized(self, grpc_context) -> tuple[int, str] | None:
        """The caller (its token's best request class, its fair-share key: the client's address as
        the proxy saw it), or None when refused (the status set on the context)."""
        peer = getattr(grpc_context, "peer", None)
        share = (peer() or "") if callable(peer) else ""
        if not self.token:
            return 0, share
        sent = dict(grpc_context.invocation_metadata()).get("authorization", "") if grpc_context else ""
        try:
            return self.token.check(sent), share
        except SeglabelError as exc:
            self._fail(grpc_context, exc)
            return None

    async def _unary(self, method, request, grpc_context):
        """``method`` (a SegmenterServicer method) on a replica."""
        caller = self._authorized(grpc_context)
        if caller is None:
            return _empty_reply(method)
        try:
            reply, replica, error = await call_replica(
                lambda: on(self.replicas, Replica.call).remote(method, request, caller=caller),
                method.__name__,
            )
        except Exception as exc:
            self._fail(grpc_context, as_domain(exc))
            return _empty_reply(method)
        if error is not None:
            self._fail(grpc_context, unpack(error))
            return _empty_reply(method)
        if grpc_context is not None:
            grpc_context.set_trailing_metadata([(REPLICA_HEADER, replica)])
        return reply

    async def Upload(self, request, grpc_context=None):
        return await self._unary(S.Upload, request, grpc_context)

    async def Segment(self, request, grpc_context=None):
        return await self._unary(S.Segment, request, grpc_context)

    async def EstimateDepth(self, request, grpc_context=None):
        return await self._unary(S.EstimateDepth, request, grpc_context)

    async def ExtractText(self, request, grpc_context=None):
        return await self._unary(S.ExtractText, request, grpc_context)

    async def GetServerInfo(self, request, grpc_context=None):
        return await self._unary(S.GetServerInfo, request, grpc_context)

    async def CreateVocabulary(self, request, grpc_context=None):
        return await self._unary(S.CreateVocabulary, request, grpc_context)

    async def GetVocabulary(self, request, grpc_context=None):
        return await self._unary(S.GetVocabulary, request, grpc_context)

    async def ListVocabularies(self, request, grpc_context=None):
        return await self._unary(S.ListVocabularies, request, grpc_context)

    async def DeleteVocabulary(self, request, grpc_context=None):
        return await self._unary(S.DeleteVocabulary, request, grpc_context)

    async def AddExamples(self, request, grpc_context=None):
        return await self._unary(S.AddExamples, request, grpc_context)

    async def RemoveExamples(self, request, grpc_context=None):
        return await self._unary(S.RemoveExamples, request, grpc_context)

    async def Relabel(self, request, grpc_context=None):
        return await self._unary(S.Relabel, request, grpc_context)

    async def StreamSegment(self, request, grpc_context=None):
        """Retried on another replica only while no event was sent; after that a lost replica ends
        the stream with UNAVAILABLE (the client decides: gRPC never retries a committed stream)."""
        caller = self._authorized(grpc_context)
        if caller is None:
            return
        events = stream_replica(
            lambda: on(self.replicas, Replica.stream, stream=True).remote(request, caller=caller),
            "StreamSegment",
        )
        sent = 0
        try:
            async with contextlib.aclosing(events):
                async for event, replica, error in events:
                    if error is not None:
                        self._fail(grpc_context, unpack(error))
                        return
                    if sent == 0 and grpc_context is not None:
                        grpc_context.set_trailing_metadata([(REPLICA_HEADER, replica)])
                    sent += 1
                    yield event
        except Exception as exc:
            self._fail(grpc_context, as_domain(exc))

    async def Check(self, request, grpc_context=None):
        """SERVING when a replica answers that it is (models loaded and warm)."""
        try:
            serving = await on(self.replicas, Replica.serving).remote()
        except Exception:
            serving = False
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        return health_pb2.HealthCheckResponse(status=status)


def as_domain(exc: BaseException) -> SeglabelError:
    """A non-domain failure (a bug in a replica) as INTERNAL, its traceback logged once here."""
    if isinstance(exc, SeglabelError):
        return exc
    log.error("replica call failed", exc_info=exc)
    return SeglabelError(f"internal error ({type(exc).__name__})")
