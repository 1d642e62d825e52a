"""The same service on Ray Serve replicas (the ``ray`` extra), reached through Ray Serve's gRPC
proxy with the project's own ``seglabel.v1.Segmenter`` methods (streaming included) and
``grpc.health.v1`` ``Check``, so the existing client, CLI and ``wait_ready`` work unchanged; and
through Ray's HTTP proxy with the HTTP/JSON routes and the web page of ``seglabel-server
--http-port`` (the same FastAPI app), with the same bearer token on both.

Two deployments: ``Seglabel`` replicas each run the whole server (model kinds, scheduler,
per-stage batching, embedding cache) with the CPUs / fractional GPUs Ray reserves for them;
``SeglabelIngress`` (no CPU reserved) is what both proxies call and routes each call to a replica
through Ray's deployment handle, so that a replica that dies mid-request is retried on another
instead of surfacing as the proxy's INTERNAL "actor died". Domain errors (a NOT_FOUND upload, a
full server) travel back as values and are answered with their status: Ray logs no traceback for
them, the replica one line with the request id and the status.

Ray's parts are used where they replace ours: request routing across replicas, replica health
(``check_health``; a replica counts as started only once its models are loaded and warmed up, since
that happens in its constructor), restarts, autoscaling on ongoing requests, CPU / GPU placement.
Uploads must be visible to every replica: use ``upload_store`` ``redis://...`` (or a ``disk:``
folder on one machine); image embeddings stay cached per replica.

    seglabel-ray --models models --replicas 2 --upload-store redis://127.0.0.1:6379/0
    serve run server/seglabel_server/transport/ray/serve.yaml          # the same, from Ray's own config file
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from ray import serve

from seglabel_server.errors import SeglabelError
from seglabel_server.service import SeglabelService
from seglabel_server.service.config import (
    ConfigError,
    ServerConfig,
    add_flags,
    apply_settings,
    settings_from_args,
)
from seglabel_server.transport.grpc.interceptor import grpc_status
from seglabel_server.transport.grpc.servicer import SegmenterServicer
from seglabel_server.transport.http.gateway import GATEWAY_CALLS, LocalGateway
from seglabel_server.transport.ray.gateway import pack
from seglabel_server.transport.ray.ingress import UNARY, SeglabelIngress
from seglabel_server.types import RequestContext

log = logging.getLogger(__name__)
# Ray Serve's own logger: its lines land in the replica's Serve log, with Ray's request id.
serve_log = logging.getLogger("ray.serve")

SERVICER_FUNCTIONS = [
    "seglabel_server.transport.ray.proxy.add_segmenter",
    "seglabel_server.transport.ray.proxy.add_health",
]


class _NoDeadline:
    """What the servicer asks of a gRPC context, for a call that arrived through Ray (the proxy
    enforces its own request_timeout_s)."""

    def time_remaining(self):
        return None


def _request_id() -> str:
    try:
        return serve.context._get_serve_request_context().request_id or "-"
    except Exception:  # outside a request (tests call methods directly)
        return "-"


@serve.deployment(
    name="Seglabel", max_ongoing_requests=16, health_check_period_s=5, graceful_shutdown_timeout_s=30
)
class SeglabelReplica:
    """One replica: the whole server (service, pipeline, scheduler, embedding cache) in a Ray actor.
    Each method answers ``(reply, replica id, error)``: a domain error is returned packed
    (``gateway.pack``) and logged as one line, never raised (Ray would log its traceback)."""

    async def __init__(self, server: dict | None = None, pin_cpus: int = 0):
        ctx = serve.get_replica_context()
        if pin_cpus and ctx:
            log.info(
                "replica pinned to CPUs %s", pin_to_cpus(getattr(ctx.rank, "local_rank", 0) or 0, pin_cpus)
            )
        cfg = ServerConfig(port=0)
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

    async def call(self, method: Callable, request):
        """A unary gRPC method of Segmenter (``ingress.UNARY``: a SegmenterServicer method)."""
        if method not in UNARY:
            raise ValueError(f"not a unary method of Segmenter: {method!r}")
        try:
            reply = await method(self.servicer, request, _NoDeadline())
        except SeglabelError as exc:
            return self._refused(method.__name__, exc)
        return reply, self.service.served_by, None

    async def stream(self, request):
        """StreamSegment's events; a domain error as the last item."""
        try:
            async for event in self.servicer.StreamSegment(request, _NoDeadline()):
                yield event, self.service.served_by, None
        except SeglabelError as exc:
            yield self._refused("StreamSegment", exc)

    async def gateway(self, method: Callable, *args):
        """A call of the HTTP routes (``gateway.RemoteGateway``): ``method``, one of LocalGateway's
        (``GATEWAY_CALLS``), run here with a RequestContext of its own, cancelled on the way out
        (whatever it queued is dropped: a cancelled call, or nothing left)."""
        if method not in GATEWAY_CALLS:
            raise ValueError(f"not a gateway call: {method!r}")
        ctx = RequestContext()
        try:
            reply = await method(self.local, *args, ctx=ctx)
        except SeglabelError as exc:
            return self._refused(f"HTTP {method.__name__}", exc)
        finally:
            ctx.cancel()
        return reply, self.service.served_by, None

    async def events(self, params, file_id, data):
        """A Segment request's stream of domain events (``service.segment_events``)."""
        try:
            async for event in self.service.segment_events(params, file_id, data, RequestContext()):
                yield event, self.service.served_by, None
        except SeglabelError as exc:
            yield self._refused("HTTP segment stream", exc)

    async def serving(self) -> bool:
        return self.service.serving


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


def build(args: dict) -> serve.Application:
    """Application builder (``import_path: seglabel_server.transport.ray.app:build``). ``args``:
    ``server`` (ServerConfig fields, as in --config files), and the deployment's Ray options:
    ``num_replicas`` or ``autoscaling`` ({min_replicas, max_replicas, target_ongoing_requests}),
    ``num_cpus``, ``num_gpus`` (fractional allowed), ``max_ongoing_requests``, ``pin_cpus``
    (bind each replica to its own ``num_cpus`` cores; CPU-only machines)."""
    args = dict(args or {})
    server = dict(args.pop("server", {}))
    apply_settings(
        ServerConfig(), server, "the Ray application's args.server"
    )  # checked before any replica starts
    num_cpus = float(args.pop("num_cpus", 1))
    pin = max(1, int(num_cpus)) if args.pop("pin_cpus", False) else 0
    options: dict = {"ray_actor_options": {"num_cpus": num_cpus, "num_gpus": float(args.pop("num_gpus", 0))}}
    # one replica = one slice of the machine: its runtimes use the CPUs Ray reserved for it
    server.setdefault("threads", max(1, int(num_cpus)))
    server.setdefault("cpu_threads", max(1, int(num_cpus)))
    if "autoscaling" in args:
        options["autoscaling_config"] = dict(args.pop("autoscaling"))
    else:
        options["num_replicas"] = int(args.pop("num_replicas", 1))
    if "max_ongoing_requests" in args:
        options["max_ongoing_requests"] = int(args.pop("max_ongoing_requests"))
    if args:
        raise ValueError(f"unknown Ray application args {sorted(args)}")
    return SeglabelIngress.bind(SeglabelReplica.options(**options).bind(server, pin), server)


def start(args: dict, grpc_port: int = 9000, http_port: int = 8000, host: str = "127.0.0.1",
          num_cpus: int | None = None, name: str = "seglabel", address: str | None = None):  # fmt: skip
    """Start a local Ray cluster (or join ``address``, e.g. "auto"), Serve with the gRPC proxy on
    ``grpc_port``, and the application; returns once every replica is SERVING (loaded and warm)."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False,
                 logging_level=logging.WARNING)  # fmt: skip
    serve.start(
        http_options={"host": host, "port": http_port},
        grpc_options={"port": grpc_port, "grpc_servicer_functions": SERVICER_FUNCTIONS},
    )
    return serve.run(build(args), name=name, route_prefix="/")


def main(argv: list[str] | None = None) -> int:
    """``seglabel-ray``: Ray's options, then every ``seglabel-server`` setting (the same flags and
    ``--config`` file, from the same config dataclass) for the replicas. ``seglabel-ray label ...``
    labels a dataset on Ray Data instead (``transport/ray/datasets.py``)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["label"]:
        from seglabel_server.transport.ray import datasets

        return datasets.main(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ray_opts = ap.add_argument_group("Ray Serve")
    ray_opts.add_argument("--replicas", type=int, default=1, help="fixed number of replicas")
    ray_opts.add_argument(
        "--min-replicas", type=int, default=0, help="with --max-replicas: autoscale between"
    )
    ray_opts.add_argument("--max-replicas", type=int, default=0)
    ray_opts.add_argument("--target-ongoing-requests", type=float, default=4.0)
    ray_opts.add_argument(
        "--num-cpus", type=float, default=1.0, help="CPUs per replica (its runtime threads)"
    )
    ray_opts.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica (fractional allowed)")
    ray_opts.add_argument(
        "--pin-cpus", action="store_true", help="bind each replica to its own cores (CPU machines)"
    )
    ray_opts.add_argument("--grpc-port", type=int, default=9000, help="Ray's gRPC proxy")
    ray_opts.add_argument(
        "--http-port", type=int, default=8000, help="Ray's HTTP proxy: the HTTP/JSON routes and the web page"
    )
    ray_opts.add_argument("--address", help="join this Ray cluster (e.g. auto) instead of starting one here")
    add_flags(ap, exclude=frozenset({"port", "http_port"}))  # the proxy's ports are Ray's
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        server = settings_from_args(a)
        apply_settings(ServerConfig(), server, a.config or "the command line")
    except ConfigError as exc:
        ap.error(str(exc))
    if server.get("upload_store", "memory") == "memory" and (a.replicas > 1 or a.max_replicas > 1):
        log.warning(
            "--upload-store memory with several replicas: an upload is seen only by the replica that got it"
        )
    args: dict = {"server": server, "num_cpus": a.num_cpus, "num_gpus": a.num_gpus, "pin_cpus": a.pin_cpus}
    if a.max_replicas:
        args["autoscaling"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                               "target_ongoing_requests": a.target_ongoing_requests}  # fmt: skip
    else:
        args["num_replicas"] = a.replicas
    host = server.get("host", "127.0.0.1")
    start(args, a.grpc_port, a.http_port, host, address=a.address)
    print(
        f"seglabel on Ray Serve: gRPC {host}:{a.grpc_port} (seglabel.v1.Segmenter, grpc.health.v1), "
        f"HTTP http://{host}:{a.http_port}/ (the JSON routes and the web page)",
        flush=True,
    )
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    asyncio.run(wait())
    serve.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
