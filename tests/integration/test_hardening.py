"""Abuse: what a shared server must survive and answer with a meaningful status (tiny models)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import time

import grpc
import numpy as np
import pytest
from PIL import Image
from seglabel_client.client import AsyncSegmenterClient, build_request
from seglabel_server.errors import LimitExceeded, Overloaded
from seglabel_server.service.budget import MemoryBudget
from seglabel_server.service.config import ServerConfig
from seglabel_server.transport.server import create_server

from tests.integration.conftest import budget_at_rest, in_flight, metric

LOOSE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def client_for(server, **kw) -> AsyncSegmenterClient:
    return AsyncSegmenterClient(f"127.0.0.1:{server.port}", timeout=120, **kw)


async def _status(coro) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value.code(), info.value.details()


def big_photo(photo: np.ndarray, side: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(photo).resize((side, side), Image.BILINEAR).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


EPS = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 64 64
%%EndComments
newpath 0 0 moveto 64 64 lineto stroke
showpage
%%EOF
"""


async def test_formats_outside_the_allowlist_are_refused_without_running_anything(make_server, monkeypatch):
    from PIL import EpsImagePlugin

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(EpsImagePlugin.subprocess, "check_call", lambda *a, **k: ran.append(a))
    server = await make_server()
    async with client_for(server) as c:
        for data in (EPS, b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n"):
            for call in (c.upload(data), c.segment(data)):
                code, msg = await _status(call)
                assert code == grpc.StatusCode.INVALID_ARGUMENT and "accepted formats" in msg
                assert "/tmp" not in msg and "gs" not in msg.split() and "Ghostscript" not in msg
    assert not ran


async def test_malformed_messages_and_strings_get_clear_short_answers(make_server, photo_bytes):
    server = await make_server()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        for method in ("Segment", "Upload", "StreamSegment"):
            kind = ch.unary_stream if method == "StreamSegment" else ch.unary_unary
            call = kind(f"/seglabel.v1.Segmenter/{method}")(b"\xff\xff\xff\xff garbage", timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                if method == "StreamSegment":
                    async for _ in call:
                        pass
                else:
                    await call
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.value.details())
            assert "malformed" in err.value.details()
    async with client_for(server) as c:
        code, msg = await _status(c.segment(file_id="a" * 100_000))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "64 lowercase hex" in msg and len(msg) < 300
        code, msg = await _status(c.segment(file_id="0" * 64))
        assert code == grpc.StatusCode.NOT_FOUND
        code, msg = await _status(c.segment(photo_bytes, max_masks=10**6))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_masks" in msg
        boxes = [(10, 10, 200, 200), (50, 50, 300, 300), (100, 100, 400, 400)]
        resp = await c.segment(photo_bytes, prompt_type="box", boxes=boxes, max_masks=2, skip_labels=True)
        assert resp.mask_count == 2
        resp = await c.segment(photo_bytes, prompt_type="box", boxes=boxes, skip_labels=True)
        assert resp.mask_count == 3
        ok = await c.segment(photo_bytes, points_per_side=2, max_masks=2, **LOOSE)
        assert ok.success and ok.mask_count == 2


async def test_a_request_over_the_memory_budget_is_refused_before_any_work(make_server, photo, photo_bytes):
    server = await make_server(max_memory_mb=64)
    metrics = server.service.metrics
    encoded = metrics.value("seglabel_inference_count_total", stage="encoder")
    async with client_for(server) as c:
        code, msg = await _status(
            c.segment(big_photo(photo, 1500), points_per_side=32, max_masks=1000, **LOOSE)
        )
        assert (
            code == grpc.StatusCode.RESOURCE_EXHAUSTED and "memory budget" in msg and "max-memory-mb" in msg
        )
        assert metrics.value("seglabel_inference_count_total", stage="encoder") == encoded  # no work
        ok = await c.segment(photo_bytes, points_per_side=2, max_masks=2, **LOOSE)
        assert ok.mask_count == 2
    # every request's charge released; what stays is the arena's working memory, charged once
    assert budget_at_rest(server) and metric(server, "seglabel_memory_arena_images") >= 1


async def test_an_idle_server_gives_a_burst_back_and_keeps_one_image_of_working_memory(make_server, photo):
    for keep in (True, False):
        server = await make_server(idle_release_s=0.2, keep_working_set=keep)
        arena = lambda server=server: metric(server, "seglabel_memory_arena_images")  # noqa: E731
        assert arena() == 1  # the warm-up's encoder run
        async with client_for(server) as c:
            # three images at once: the encoder batch grows the arena, each share charged once
            async def one(side):
                data = big_photo(photo, side)
                return await c.segment(data, points_per_side=2, max_masks=2, skip_labels=True, **LOOSE)

            answers = await asyncio.gather(*(one(side) for side in (256, 280, 300)))
            assert all(a.mask_count == 2 for a in answers)
            assert arena() >= 2 and budget_at_rest(server)
        for _ in range(100):  # idle past --idle-release-s: given back
            await asyncio.sleep(0.1)
            if arena() == int(keep):
                break
        assert arena() == int(keep), keep
        assert budget_at_rest(server)


def test_the_budget_refuses_what_does_not_fit_and_gets_every_byte_back():
    budget = MemoryBudget(100)
    a = budget.charge(60)
    with pytest.raises(Overloaded, match="60 of 0 MB in use|in use"):
        budget.charge(50)
    with pytest.raises(LimitExceeded, match="whole memory budget"):
        budget.charge(101)
    a.release()
    a.release()  # idempotent
    assert budget.used == 0
    budget.charge(100).release()


async def _unloaded(c, small, n=3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        await c.segment(small, points_per_side=2, max_masks=2, skip_labels=True, overlay=False, **LOOSE)
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2]


# Seconds of per-mask work on the tiny models (3.4 s at 2000 px on this project's 2-core machine,
# 2026-12-08; grid 12 at 1500 px took 0.84 s once the per-mask loops were compiled)
HEAVY = dict(points_per_side=32, max_masks=1000, skip_labels=True, overlay=False, **LOOSE)


async def test_cancel_and_deadline_stop_the_cpu_stages(make_server, photo, photo_bytes):
    """Per-mask upsampling/RLE of a big image runs in worker threads; a cancelled stream or a passed
    deadline must stop it, so a small request right after is not stuck behind it."""
    server = await make_server(cpu_threads=2)
    heavy = big_photo(photo, 2000)
    async with client_for(server) as c:
        unloaded = await _unloaded(c, photo_bytes)
        await c.segment(heavy, **HEAVY)  # first-time costs (buffers of a 2000 px image) out of the timing
        t0 = time.perf_counter()
        full = await c.segment(heavy, **HEAVY)
        heavy_s = time.perf_counter() - t0
        assert full.mask_count > 900 and full.timings.upsample_ms > 10 * unloaded * 1000

        # cancel: right after the decoder finished, while masks are being made
        call = c.stub.StreamSegment(build_request(heavy, **HEAVY))
        async for ev in call:
            if (
                ev.WhichOneof("event") == "progress"
                and ev.progress.stage == "decoder"
                and ev.progress.fraction == 1
            ):
                break
        await asyncio.sleep(0.05)
        call.cancel()
        t0 = time.perf_counter()
        await c.segment(photo_bytes, points_per_side=2, max_masks=2, skip_labels=True, overlay=False, **LOOSE)
        after_cancel = time.perf_counter() - t0

        # deadline: passes in the middle of the masks
        post = full.timings.upsample_ms / 1000
        budget = heavy_s - post / 2
        code, _ = await _status(c.segment(heavy, timeout=budget, **HEAVY))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        t0 = time.perf_counter()
        await c.segment(photo_bytes, points_per_side=2, max_masks=2, skip_labels=True, overlay=False, **LOOSE)
        after_deadline = time.perf_counter() - t0
    slack = 0.15  # scheduling noise on a shared 2-core machine
    assert after_cancel < 2 * unloaded + slack, (after_cancel, unloaded, heavy_s)
    assert after_deadline < 2 * unloaded + slack, (after_deadline, unloaded, heavy_s)


async def test_an_unread_stream_is_ended_after_the_stall_limit(make_server, photo):
    server = await make_server(stream_stall_s=1.0)
    opts = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 256 << 20)]
    heavy = big_photo(photo, 2000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=opts) as ch:
        from seglabel_api.pb.seglabel.v1 import seglabel_pb2_grpc as pb_grpc

        stub = pb_grpc.SegmenterStub(ch)
        call = stub.StreamSegment(
            build_request(heavy, points_per_side=32, max_masks=1000, skip_labels=True, **LOOSE)
        )
        first = await call.read()
        assert first.WhichOneof("event") == "accepted"
        deadline = time.monotonic() + 60
        while in_flight(server) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # read nothing: the masks and the overlay fill the window
        assert in_flight(server) == 0
        failures = server.service.metrics.value(
            "seglabel_request_failure_total", method="StreamSegment", code="RESOURCE_EXHAUSTED"
        )
        assert failures == 1
        with pytest.raises(grpc.aio.AioRpcError) as err:
            while True:
                if await call.read() == grpc.aio.EOF:
                    break
        assert (
            err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "read nothing" in err.value.details()
        )


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    (d / "token").write_text("s3cret-token\n")
    return d


async def test_tls_and_token(make_server, tls_files, photo_bytes):
    server = await make_server(
        tls_cert=str(tls_files / "cert.pem"),
        tls_key=str(tls_files / "key.pem"),
        auth_token_file=str(tls_files / "token"),
    )
    target = f"localhost:{server.port}"
    ca = tls_files / "cert.pem"
    async with AsyncSegmenterClient(target, timeout=30, tls_ca=ca, token="s3cret-token") as c:
        resp = await c.segment(photo_bytes, points_per_side=2, max_masks=2, **LOOSE)
        assert resp.mask_count == 2
        info = await c.server_info()
        assert info.backend == "onnxruntime"
    async with AsyncSegmenterClient(target, timeout=30, tls_ca=ca, token="") as c:
        code, msg = await _status(c.server_info())
        assert code == grpc.StatusCode.UNAUTHENTICATED and "token" in msg
        code, _ = await _status(c.stream_segment(photo_bytes).__anext__())
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert await c.health() == "SERVING"  # health stays open
    async with AsyncSegmenterClient(target, timeout=30, tls_ca=ca, token="wrong") as c:
        code, _ = await _status(c.segment(photo_bytes))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}", timeout=5, token="s3cret-token") as c:
        code, _ = await _status(c.server_info())  # plaintext to a TLS port
        assert code == grpc.StatusCode.UNAVAILABLE
    assert (
        server.service.metrics.value(
            "seglabel_request_failure_total", method="Segment", code="UNAUTHENTICATED"
        )
        == 1
    )


async def test_a_public_address_needs_tls_and_a_token(tiny_repo, tls_files):
    with pytest.raises(ValueError, match="without TLS and a token"):
        await create_server(ServerConfig(host="0.0.0.0", port=0, models=str(tiny_repo)))
    with pytest.raises(ValueError, match="without TLS and a token"):
        await create_server(
            ServerConfig(
                host="0.0.0.0", port=0, models=str(tiny_repo), auth_token_file=str(tls_files / "token")
            )
        )
