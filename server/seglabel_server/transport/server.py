"""``seglabel-server``: grpc.aio server factory and entry point."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb
from seglabel_api.pb.seglabel.v1 import seglabel_pb2_grpc as pb_grpc

from seglabel_server import memory
from seglabel_server.metrics import Metrics
from seglabel_server.service import SeglabelService
from seglabel_server.service.config import ServerConfig, config_from_args
from seglabel_server.transport.auth import Tokens, read_tokens
from seglabel_server.transport.grpc.interceptor import AuthInterceptor, ErrorInterceptor
from seglabel_server.transport.grpc.servicer import SegmenterServicer

log = logging.getLogger("seglabel_server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Segmenter"].full_name


class Server:
    """A started grpc.aio server, its port, the domain service and the health servicer."""

    def __init__(
        self,
        grpc_server: grpc.aio.Server,
        port: int,
        service: SeglabelService,
        health_servicer: health.aio.HealthServicer,
    ):
        self.grpc = grpc_server
        self.port = port
        self.service = service
        self.health = health_servicer
        self.http: Any = None  # the HTTP gateway's uvicorn server, when --http-port is given
        self.http_task: asyncio.Task | None = None

    async def load(self) -> None:
        """Load and warm up the models, then report SERVING."""
        await self.service.load()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def drain(self, seconds: float) -> bool:
        """Health NOT_SERVING, new requests UNAVAILABLE, in-flight ones get ``seconds`` to finish.
        True when they all did."""
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.service.drain()
        try:
            await asyncio.wait_for(self.service.admission.idle.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def stop(self, grace: float | None = None) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self.http is not None and self.http_task is not None:
            self.http.should_exit = True
            await asyncio.wait([self.http_task], timeout=10)
        await self.grpc.stop(grace if grace is not None else self.service.cfg.drain_seconds)
        await self.service.close()


LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


def _credentials(cfg: ServerConfig) -> tuple[grpc.ServerCredentials | None, Tokens | None]:
    """(TLS credentials or None, bearer tokens or None); refuses to expose a non-loopback address
    without both unless ``insecure`` is set."""
    creds, token = None, None
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")
    if cfg.tls_cert:
        ca = Path(cfg.tls_client_ca).read_bytes() if cfg.tls_client_ca else None
        creds = grpc.ssl_server_credentials(
            [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )
    token = read_tokens(cfg.auth_token_file)
    if cfg.host not in LOOPBACK and not (creds and token) and not cfg.insecure:
        raise ValueError(
            f"refusing to serve {cfg.host} without TLS and a token: give --tls-cert/--tls-key and "
            "--auth-token-file, bind 127.0.0.1, or pass --insecure"
        )
    return creds, token


async def create_server(cfg: ServerConfig) -> Server:
    """Bind and start serving (health NOT_SERVING); call ``await server.load()`` to load models.
    Port 0 binds an ephemeral port (tests)."""
    creds, token = _credentials(cfg)
    metrics = Metrics()
    service = SeglabelService(cfg, metrics)
    interceptors = [ErrorInterceptor(metrics, (SERVICE_NAME,), cfg.stream_stall_s)]
    if token:
        interceptors.insert(0, AuthInterceptor(token, metrics))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", cfg.max_image_bytes + (1 << 20)),
            ("grpc.max_send_message_length", 256 << 20),
        ],
    )
    pb_grpc.add_SegmenterServicer_to_server(SegmenterServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{cfg.host}:{cfg.port}"
    port = server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"cannot bind {address}")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    out = Server(server, port, service, health_servicer)
    if cfg.http_port:
        await _start_http(out, cfg, token)
    return out


async def _start_http(server: Server, cfg: ServerConfig, token: Tokens | None) -> None:
    """The HTTP/JSON gateway on the same loop and service (uvicorn, without its signal handling:
    SIGTERM drains both)."""
    import uvicorn

    from seglabel_server.transport.http import labelstudio
    from seglabel_server.transport.http.app import create_app
    from seglabel_server.transport.http.gateway import LocalGateway

    class _Uvicorn(uvicorn.Server):
        def capture_signals(self):
            import contextlib

            return contextlib.nullcontext()

    asgi, _ = create_app(LocalGateway(server.service), token, labelstudio.settings_of(cfg, os.environ))
    config = uvicorn.Config(
        asgi, host=cfg.host, port=cfg.http_port, log_level="warning", lifespan="off",
        ssl_certfile=cfg.tls_cert or None, ssl_keyfile=cfg.tls_key or None,
    )  # fmt: skip
    server.http = _Uvicorn(config)
    server.http_task = asyncio.create_task(server.http.serve())
    for _ in range(200):
        if server.http.started or server.http_task.done():
            break
        await asyncio.sleep(0.025)
    if not server.http.started:
        await server.stop(0)
        raise RuntimeError(f"cannot serve HTTP on {cfg.host}:{cfg.http_port}")


async def serve(cfg: ServerConfig) -> int:
    """Serve until SIGTERM/SIGINT, then drain: health NOT_SERVING, new requests UNAVAILABLE, in-flight
    requests get ``drain_seconds``; exit 0. A second signal exits at once."""
    try:
        server = await create_server(cfg)
    except (ValueError, OSError, RuntimeError) as exc:
        log.error("cannot serve: %s", exc)
        return 2
    log.info("listening on %s:%d (health NOT_SERVING until models are warm)", cfg.host, server.port)
    if cfg.http_port:
        log.info(
            "HTTP/JSON gateway on http%s://%s:%d (docs: /docs)",
            "s" if cfg.tls_cert else "",
            cfg.host,
            cfg.http_port,
        )
    if cfg.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(cfg.metrics_port, addr=cfg.host, registry=server.service.metrics.registry)
        log.info("metrics on http://%s:%d/metrics", cfg.host, cfg.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    server.service.metrics.tasks.set_function(lambda: len(asyncio.all_tasks(loop)))

    def on_signal() -> None:
        if stop.is_set():
            log.warning("second signal: exiting now")
            os._exit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    loading = asyncio.create_task(server.load())
    await asyncio.wait([loading, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        log.error("cannot serve: %s", loading.exception())
        await server.stop(0)
        return 1
    if not stop.is_set():
        log.info("SERVING")
        await stop.wait()
    loading.cancel()
    log.info(
        "draining: %d requests in flight, up to %.1fs", server.service.admission.inflight, cfg.drain_seconds
    )
    t0 = loop.time()
    finished = await server.drain(cfg.drain_seconds)
    log.info("drained" if finished else "drain time over: ending the requests still in flight")
    # gRPC's own grace lets answers already computed reach their clients.
    await server.stop(max(1.0, cfg.drain_seconds - (loop.time() - t0)) if finished else 0)
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg, args = config_from_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    memory.bound_heap()
    return asyncio.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
