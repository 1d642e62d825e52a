"""``seglabel-server``: grpc.aio server factory and entry point."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb
from seglabel_api.pb.seglabel.v1 import seglabel_pb2_grpc as pb_grpc

from seglabel_server.config import ServerConfig, config_from_args
from seglabel_server.interceptor import ErrorInterceptor
from seglabel_server.metrics import Metrics
from seglabel_server.service import SeglabelService
from seglabel_server.servicer import SegmenterServicer

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

    async def load(self) -> None:
        """Load and warm up the models, then report SERVING."""
        await self.service.load()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float | None = None) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.stop(grace if grace is not None else self.service.cfg.grace_s)
        await self.service.close()


async def create_server(cfg: ServerConfig) -> Server:
    """Bind and start serving (health NOT_SERVING); call ``await server.load()`` to load models.
    Port 0 binds an ephemeral port (tests)."""
    metrics = Metrics()
    service = SeglabelService(cfg, metrics)
    server = grpc.aio.server(
        interceptors=[ErrorInterceptor(metrics, (SERVICE_NAME,))],
        options=[
            ("grpc.max_receive_message_length", cfg.max_image_bytes + (1 << 20)),
            ("grpc.max_send_message_length", 256 << 20),
        ],
    )
    pb_grpc.add_SegmenterServicer_to_server(SegmenterServicer(service), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(f"{cfg.host}:{cfg.port}")
    if port == 0:
        raise RuntimeError(f"cannot bind {cfg.host}:{cfg.port}")
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    return Server(server, port, service, health_servicer)


async def serve(cfg: ServerConfig) -> int:
    server = await create_server(cfg)
    log.info("listening on %s:%d (health NOT_SERVING until models are warm)", cfg.host, server.port)
    if cfg.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(cfg.metrics_port, addr=cfg.host, registry=server.service.metrics.registry)
        log.info("metrics on http://%s:%d/metrics", cfg.host, cfg.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.load()
    except Exception as exc:
        log.error("cannot serve: %s", exc)
        await server.stop(0)
        return 1
    log.info("SERVING")
    await stop.wait()
    log.info("stopping (grace %.1fs)", cfg.grace_s)
    await server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg, args = config_from_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(serve(cfg))


if __name__ == "__main__":
    sys.exit(main())
