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
import logging
import signal
import sys

from ray import serve

from seglabel_server.service.config import (
    ConfigError,
    ServerConfig,
    add_flags,
    apply_settings,
    settings_from_args,
)
from seglabel_server.transport.ray.ingress import SeglabelIngress
from seglabel_server.transport.ray.replica import SeglabelReplica

log = logging.getLogger(__name__)

SERVICER_FUNCTIONS = [
    "seglabel_server.transport.ray.proxy.add_segmenter",
    "seglabel_server.transport.ray.proxy.add_health",
]


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
    replicas = SeglabelReplica.options(**options).bind(server, pin)  # type: ignore[attr-defined]
    return SeglabelIngress.bind(replicas, server)  # type: ignore[attr-defined]


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
