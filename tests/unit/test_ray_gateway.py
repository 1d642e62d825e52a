"""The Ray ingress's logic without a cluster: a fake deployment handle stands in for the replicas.
Retries when a replica dies, domain errors carried back as values (kind, message, pushback), the
bearer token on the gRPC methods and on the HTTP routes (the same FastAPI app as the server's)."""

from __future__ import annotations

import json

import grpc
import pytest

pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'seglabel[ray]')")

from ray.exceptions import RayActorError  # noqa: E402
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb  # noqa: E402
from seglabel_server.errors import Overloaded, Unavailable, UnknownFile  # noqa: E402
from seglabel_server.transport.auth import Tokens  # noqa: E402
from seglabel_server.transport.grpc.servicer import SegmenterServicer  # noqa: E402
from seglabel_server.transport.http.app import create_app  # noqa: E402
from seglabel_server.transport.http.gateway import GATEWAY_CALLS, LocalGateway  # noqa: E402
from seglabel_server.transport.ray import app as ray_app  # noqa: E402
from seglabel_server.transport.ray.calls import pack  # noqa: E402
from seglabel_server.transport.ray.gateway import RemoteGateway  # noqa: E402


class Method:
    """``handle.<method>.remote(*args)``: answers from a script (values or exceptions to raise)."""

    def __init__(self, script: list):
        self.script, self.calls, self.kwargs = script, [], []

    def remote(self, *args, **kwargs):
        self.calls.append(args)
        self.kwargs.append(kwargs)
        answer = self.script.pop(0)

        async def result():
            if isinstance(answer, BaseException):
                raise answer
            return answer

        return result()


class Handle:
    def __init__(self, **methods: list):
        for name, script in methods.items():
            setattr(self, name, Method(script))


async def test_a_lost_replica_is_retried_and_domain_errors_keep_their_kind():
    handle = Handle(
        gateway=[
            RayActorError(),
            (("abc", 4, 5), "replica-2", None),
            (None, "replica-1", pack(Overloaded("full; retry later", retry_after_ms=300))),
        ]
    )
    gateway = RemoteGateway(handle, 1 << 20)
    assert await gateway.upload(b"png", "a.png") == ("abc", 4, 5)
    assert len(handle.gateway.calls) == 2  # the first replica died, the second answered
    # the replica is asked for the in-process gateway's method itself, not a name
    assert (
        handle.gateway.calls[0] == (LocalGateway.upload, b"png", "a.png")
        and LocalGateway.upload in GATEWAY_CALLS
    )
    with pytest.raises(Overloaded) as err:
        await gateway.segment(None, "f" * 64, None, None)
    assert str(err.value) == "full; retry later" and err.value.retry_after_ms == 300


async def test_no_replica_left_is_unavailable_with_a_pushback():
    gateway = RemoteGateway(Handle(gateway=[RayActorError(), RayActorError(), RayActorError()]), 1 << 20)
    with pytest.raises(Unavailable) as err:
        await gateway.info()
    assert err.value.retry_after_ms == 1000


class GrpcContext:
    def __init__(self, metadata=()):
        self.metadata, self.code, self.details, self.trailers = list(metadata), None, "", []

    def invocation_metadata(self):
        return self.metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details

    def set_trailing_metadata(self, trailers):
        self.trailers = list(trailers)


def ingress(handle, token):
    """The ingress deployment's own class (under Ray's ASGI wrapper), without Ray starting it."""
    wrapped = ray_app.SeglabelIngress.func_or_class
    obj = object.__new__(wrapped.__mro__[1])  # [0] is Ray's wrapper, which takes our class's names
    obj.replicas, obj.token = handle, Tokens(((token, 0),)) if token else None
    obj.gateway = RemoteGateway(handle, 1 << 20)
    return obj


async def test_the_grpc_methods_ask_for_the_token_and_answer_domain_errors_with_their_code():
    reply = pb.SegmentResponse(success=True, mask_count=3)
    handle = Handle(
        call=[(None, "r1", pack(UnknownFile("unknown file_id"))), (reply, "r2", None)],
        stream=[],
    )
    node = ingress(handle, "s3cret")
    anonymous = GrpcContext()
    assert await node.Segment(pb.SegmentRequest(), anonymous) == pb.SegmentResponse()
    assert anonymous.code == grpc.StatusCode.UNAUTHENTICATED and not handle.call.calls
    assert [
        e async for e in node.StreamSegment(pb.SegmentRequest(), GrpcContext([("authorization", "x")]))
    ] == []
    ok = [("authorization", "Bearer s3cret")]
    missing = GrpcContext(ok)
    await node.Segment(pb.SegmentRequest(), missing)
    assert missing.code == grpc.StatusCode.NOT_FOUND and "unknown file_id" in missing.details
    served = GrpcContext(ok)
    assert await node.Segment(pb.SegmentRequest(), served) == reply
    assert served.code is None and ("seglabel-replica", "r2") in served.trailers
    assert handle.call.calls[-1][0] is SegmenterServicer.Segment  # the servicer's method, not a name


async def asgi_get(app, path: str, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    """One GET through an ASGI app, without an HTTP client."""
    sent: list = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
    }  # fmt: skip
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, body


async def test_the_http_routes_on_ray_ask_for_the_same_token():
    handle = Handle(gateway=[(None, "r1", pack(UnknownFile("unknown file_id"))), (True, "r1", None)])
    asgi, _ = create_app(RemoteGateway(handle, 1 << 20), Tokens((("s3cret", 0),)))
    status, _, body = await asgi_get(asgi, f"/depth/{'0' * 64}", {})
    assert (
        status == 401 and json.loads(body)["error"]["code"] == "unauthenticated" and not handle.gateway.calls
    )
    status, _, body = await asgi_get(asgi, f"/depth/{'0' * 64}", {"authorization": "Bearer s3cret"})
    assert status == 404 and json.loads(body)["error"]["message"] == "unknown file_id"
    status, _, body = await asgi_get(asgi, "/healthz", {})  # public, as on the server
    assert status == 200 and json.loads(body) == {"status": "SERVING"}


async def test_a_tokens_class_and_the_callers_key_reach_the_replica():
    """Through Ray the replica runs each call in a context of its own: the ingress sends the
    caller (its token's best class, its fair-share key) with the call, gRPC and HTTP alike."""
    reply = pb.SegmentResponse(success=True)
    handle = Handle(call=[(reply, "r1", None), (reply, "r1", None)],
                    gateway=[(None, "r1", pack(UnknownFile("unknown file_id")))])  # fmt: skip
    node = ingress(handle, None)
    node.token = Tokens((("team", 0), ("job", 2)))
    for token, ceiling in (("job", 2), ("team", 0)):
        ctx = GrpcContext([("authorization", f"Bearer {token}")])
        ctx.peer = lambda: "ipv4:10.0.0.7:5000"
        assert await node.Segment(pb.SegmentRequest(), ctx) == reply
        assert handle.call.kwargs[-1] == {"caller": (ceiling, "ipv4:10.0.0.7:5000")}
    asgi, _ = create_app(RemoteGateway(handle, 1 << 20), node.token)
    status, _, _ = await asgi_get(asgi, f"/depth/{'0' * 64}", {"authorization": "Bearer job"})
    assert status == 404 and handle.gateway.kwargs[-1] == {"caller": (2, "http:127.0.0.1:1")}
