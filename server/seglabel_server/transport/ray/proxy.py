"""The ``grpc_servicer_functions`` given to Ray Serve's gRPC proxy (imported in the proxy's process:
protobuf stubs only, nothing of the server).

The generated ``add_*Servicer_to_server`` functions register each method twice: as generic handlers,
which the proxy replaces with its routing to replicas, and as "registered method handlers", which it
does not replace, so a current client (whose stubs call registered methods) would reach the proxy's
placeholder servicer. These add the generic handlers only; the server falls back to them for every
call."""

from __future__ import annotations

from grpc_health.v1 import health_pb2_grpc
from seglabel_api.pb.seglabel.v1 import seglabel_pb2_grpc


class _GenericOnly:
    def __init__(self, server):
        self._server = server

    def add_generic_rpc_handlers(self, handlers):
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name, method_handlers):
        pass


def add_segmenter(servicer, server) -> None:
    seglabel_pb2_grpc.add_SegmenterServicer_to_server(servicer, _GenericOnly(server))


def add_health(servicer, server) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(servicer, _GenericOnly(server))
