"""A real grpc.aio server on 127.0.0.1 (ephemeral port) with the tiny models, driven by the client."""

from __future__ import annotations

import asyncio
import hashlib
import io

import grpc
import numpy as np
import pytest
from PIL import Image
from seglabel_client.client import AsyncSegmenterClient, build_request
from seglabel_server.models.vocab import DEFAULT_VOCABULARY

from tests.integration.conftest import in_flight

from ..conftest import distinct_images

LOOSE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def client_for(server) -> AsyncSegmenterClient:
    return AsyncSegmenterClient(f"127.0.0.1:{server.port}", timeout=120)


def rle_iou(a, b) -> float:
    from pycocotools import mask as mask_utils

    def rles(resp):
        return [{"size": list(m.rle.size), "counts": m.rle.counts.encode()} for m in resp.masks]

    return float(np.asarray(mask_utils.iou(rles(a), rles(b), [0] * len(b.masks))).max(axis=1).mean())


async def test_upload_then_segment_round_trip(make_server, photo_bytes):
    server = await make_server()
    async with client_for(server) as c:
        up = await c.upload(photo_bytes, filename="astronaut.jpg")
        assert up.file_id == hashlib.sha256(photo_bytes).hexdigest() and (up.width, up.height) == (512, 512)
        resp = await c.segment(file_id=up.file_id, points_per_side=6, max_masks=12, **LOOSE)
        assert resp.success and resp.mask_count == len(resp.masks) == 12
        assert sorted(lab.mask_index for lab in resp.labels) == list(range(12))
        assert all(0.0 <= lab.confidence <= 1.0 and lab.label in DEFAULT_VOCABULARY for lab in resp.labels)
        assert all(len(lab.top_k) == 3 for lab in resp.labels)
        png = Image.open(io.BytesIO(resp.segmented_image))
        assert png.format == "PNG" and png.size == (512, 512)
        assert resp.timings.total_ms > 0 and resp.timings.encoder_ms > 0 and resp.timings.decoder_ms > 0
        m = resp.masks[0]
        assert list(m.rle.size) == [512, 512] and len(m.bbox) == 4 and m.area > 0
        inline = await c.segment(photo_bytes, points_per_side=6, max_masks=12, overlay=False, **LOOSE)
        assert inline.mask_count == 12 and not inline.segmented_image
        assert rle_iou(inline, resp) > 0.999


async def test_stream_events_arrive_in_order(make_server, photo_bytes):
    server = await make_server(max_batch={"clip": 4})
    async with client_for(server) as c:
        kinds, done, total, masks = [], [], None, 0
        async for ev in c.stream_segment(photo_bytes, points_per_side=6, max_masks=10, **LOOSE):
            kind = ev.WhichOneof("event")
            kinds.append(kind)
            if kind == "masks":
                masks += len(ev.masks.masks)
            elif kind == "label_update":
                done.append(ev.label_update.done)
                total = ev.label_update.total
                assert all(0 <= lab.mask_index < masks for lab in ev.label_update.labels)
            elif kind == "summary":
                summary = ev.summary
    assert kinds[0] == "accepted" and kinds[-1] == "summary"
    assert kinds.index("masks") < kinds.index("label_update")
    assert masks == 10 and total == 10 and done == [4, 8, 10]  # monotone, one update per CLIP batch
    assert summary.mask_count == 10 and len(summary.labels) == 10 and summary.segmented_image
    assert not summary.masks  # masks are not sent twice


async def test_cancelling_a_stream_stops_the_work(make_server, photo_bytes):
    server = await make_server(max_batch={"clip": 1})
    metrics = server.service.metrics
    async with client_for(server) as c:
        call = c.stub.StreamSegment(build_request(photo_bytes, points_per_side=8, max_masks=60, **LOOSE))
        async for ev in call:
            if ev.WhichOneof("event") == "label_update":
                call.cancel()
                break
        for _ in range(200):
            if in_flight(server) == 0:
                break
            await asyncio.sleep(0.02)
        assert in_flight(server) == 0
        labelled = metrics.value("seglabel_inference_count_total", stage="clip")
        await asyncio.sleep(0.3)
        assert metrics.value("seglabel_inference_count_total", stage="clip") == labelled  # nothing more runs
        assert labelled < 60 + 1  # +1: warm-up
        assert metrics.value("seglabel_request_failure_total", method="StreamSegment", code="CANCELLED") == 1
        # the server still serves
        resp = await c.segment(photo_bytes, points_per_side=2, max_masks=2, **LOOSE)
        assert resp.mask_count == 2


async def test_concurrent_clients_each_get_their_own_answer_in_shared_batches(make_server):
    images = distinct_images(8)
    server = await make_server()
    metrics = server.service.metrics
    kw = dict(points_per_side=4, max_masks=6, overlay=False, **LOOSE)
    async with client_for(server) as c:
        alone = [await c.segment(img, **kw) for img in images]
        before = {
            s: (
                metrics.value("seglabel_inference_count_total", stage=s),
                metrics.value("seglabel_execution_count_total", stage=s),
            )
            for s in ("encoder", "clip")
        }
        together = await asyncio.gather(*[c.segment(img, **kw) for img in images])
    for i, (a, b) in enumerate(zip(alone, together)):
        assert b.mask_count == a.mask_count == 6 and (b.width, b.height) == (128, 96)
        assert rle_iou(b, a) > 0.99, f"image {i} got someone else's masks"
        assert [lab.label for lab in b.labels] == [lab.label for lab in a.labels]
    assert rle_iou(together[0], alone[1]) < rle_iou(together[0], alone[0])
    formed = []
    for s in ("encoder", "clip"):
        inferences = metrics.value("seglabel_inference_count_total", stage=s) - before[s][0]
        executions = metrics.value("seglabel_execution_count_total", stage=s) - before[s][1]
        formed.append(inferences > executions)
    assert any(formed), "no batch of size > 1 was formed"


async def _status(coro) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    return info.value.code(), info.value.details()


async def test_bad_requests_get_clear_statuses_and_others_are_unharmed(make_server, photo_bytes):
    server = await make_server(max_image_bytes=200_000)
    async with client_for(server) as c:
        code, msg = await _status(c.segment(b"definitely not an image"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "cannot decode image" in msg
        code, msg = await _status(c.segment(file_id="f" * 64))
        assert code == grpc.StatusCode.NOT_FOUND and "unknown file_id" in msg
        code, msg = await _status(c.segment(photo_bytes, prompt_type="points"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "POINTS needs" in msg
        code, msg = await _status(c.segment(photo_bytes, prompt_type="box", boxes=[(5, 5, 1, 1)]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "x1 > x0" in msg
        code, msg = await _status(c.segment(photo_bytes, pred_iou_thresh=2.0))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "pred_iou_thresh" in msg
        code, msg = await _status(c.segment(photo_bytes, points_per_side=500))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "points_per_side" in msg
        big = np.random.default_rng(0).integers(0, 255, (400, 400, 3), np.uint8)
        buf = io.BytesIO()
        Image.fromarray(big).save(buf, format="PNG")
        code, msg = await _status(c.upload(buf.getvalue()))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit" in msg
        code, msg = await _status(c.segment(photo_bytes, points_per_side=16, timeout=0.05, **LOOSE))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        code, _ = await _status(c.stream_segment(b"\x89PNG broken").__anext__())
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        ok = await c.segment(photo_bytes, points_per_side=2, max_masks=2, **LOOSE)
        assert ok.success and ok.mask_count == 2


async def test_overload_is_refused_at_once_while_admitted_work_finishes(make_server, photo_bytes):
    server = await make_server(max_inflight=1)
    async with client_for(server) as c:
        first = asyncio.ensure_future(c.segment(photo_bytes, points_per_side=12, **LOOSE))
        for _ in range(500):
            if in_flight(server) == 1:
                break
            await asyncio.sleep(0.005)
        code, msg = await _status(c.segment(photo_bytes, points_per_side=2))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "in flight" in msg
        assert (await first).success


async def test_health_is_serving_only_after_warm_up(make_server, photo_bytes):
    server = await make_server(load=False)
    async with client_for(server) as c:
        assert await c.health() == "NOT_SERVING"
        assert await c.health("seglabel.v1.Segmenter") == "NOT_SERVING"
        code, msg = await _status(c.segment(photo_bytes))
        assert code == grpc.StatusCode.UNAVAILABLE and "not loaded" in msg
        await server.load()
        assert await c.health() == "SERVING" and await c.health("seglabel.v1.Segmenter") == "SERVING"
        assert server.service.metrics.value("seglabel_execution_count_total", stage="encoder") >= 1  # warmed


async def test_server_info_tells_the_truth(make_server):
    server = await make_server()
    async with client_for(server) as c:
        info = await c.server_info()
    assert info.backend == "onnxruntime" and info.device == "cpu"
    assert list(info.providers) == ["CPUExecutionProvider"]
    assert info.random_weights and all(m.random_weights for m in info.models)
    assert {m.name for m in info.models} == {
        "sam2_image_encoder",
        "sam2_mask_decoder",
        "sam2_track_conditioner",
        "sam2_track_decoder",
        "sam2_memory_encoder",
        "clip_image_encoder",
        "clip_text_encoder",
    }
    assert len(info.default_vocabulary) == 55 and list(info.default_vocabulary).count("book") == 1
    assert info.limits.max_points_per_side == 64 and not info.labels_unavailable_reason


async def test_no_clip_server_still_segments(make_server, photo_bytes):
    server = await make_server(load_clip=False)
    async with client_for(server) as c:
        info = await c.server_info()
        resp = await c.segment(photo_bytes, points_per_side=2, max_masks=2, **LOOSE)
    assert "CLIP" in info.labels_unavailable_reason
    assert resp.mask_count == 2 and not resp.labels and "CLIP" in resp.labels_unavailable_reason


async def test_a_failure_mid_stream_ends_it_with_the_mapped_status(make_server, photo_bytes, monkeypatch):
    """Events already sent stay sent; the error kind becomes the status (counted once, by code), and
    an unexpected exception is INTERNAL for unary and streaming calls alike."""
    from seglabel_server.errors import Unavailable

    server = await make_server()
    path = server.service.lifecycle.loaded.pipeline.mask_path

    async def gone(req, chunk, full, ctx):
        raise Unavailable("text tower went away")

    monkeypatch.setattr(path, "crops", gone)
    metrics = server.service.metrics
    async with client_for(server) as c:
        kinds = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for ev in c.stream_segment(photo_bytes, points_per_side=2, max_masks=2, **LOOSE):
                kinds.append(ev.WhichOneof("event"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "text tower" in err.value.details()
        assert kinds[0] == "accepted" and "masks" in kinds and "summary" not in kinds
        assert (
            metrics.value("seglabel_request_failure_total", method="StreamSegment", code="UNAVAILABLE") == 1
        )

        async def broken(req, chunk, full, ctx):
            raise RuntimeError("boom")

        monkeypatch.setattr(path, "crops", broken)
        code, msg = await _status(c.segment(photo_bytes, points_per_side=2, max_masks=2, **LOOSE))
        assert code == grpc.StatusCode.INTERNAL and "boom" in msg
        assert metrics.value("seglabel_request_failure_total", method="Segment", code="INTERNAL") == 1
        ok = await c.segment(photo_bytes, points_per_side=2, max_masks=2, skip_labels=True, **LOOSE)
        assert ok.success and ok.mask_count == 2
        assert metrics.value("seglabel_request_success_total", method="Segment") == 1


async def test_upload_keeps_the_filename_and_success_tells_when_labels_are_missing(make_server, photo_bytes):
    full, no_clip = await make_server(), await make_server(load_clip=False)
    async with client_for(full) as c:
        up = await c.upload(photo_bytes, filename="astronaut.jpg")
        assert (
            up.filename == "astronaut.jpg"
            and full.service.images.files.filename(up.file_id) == "astronaut.jpg"
        )
        assert (await c.upload(photo_bytes)).filename == ""
        resp = await c.segment(file_id=up.file_id, points_per_side=2, max_masks=2, **LOOSE)
        assert resp.success and resp.labels
        skipped = await c.segment(
            file_id=up.file_id, points_per_side=2, max_masks=2, skip_labels=True, **LOOSE
        )
        assert skipped.success and not skipped.labels  # not asked for: nothing missing
    async with client_for(no_clip) as c:
        resp = await c.segment(photo_bytes, points_per_side=2, max_masks=2, **LOOSE)
        assert not resp.success and resp.mask_count == 2 and "CLIP" in resp.labels_unavailable_reason


async def test_progress_reports_real_fractions(make_server, photo_bytes):
    server = await make_server(max_batch={"decoder": 16})
    async with client_for(server) as c:
        progress = [
            (ev.progress.stage, round(ev.progress.fraction, 3))
            async for ev in c.stream_segment(photo_bytes, points_per_side=6, max_masks=2, **LOOSE)
            if ev.WhichOneof("event") == "progress"
        ]
    # 36 prompts in decoder batches of 16: three batches
    assert progress == [("encoder", 1.0), ("decoder", 0.333), ("decoder", 0.667), ("decoder", 1.0)]


async def test_reflection_lists_the_services(make_server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = await make_server(load=False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)

        async def requests():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        async for resp in stub.ServerReflectionInfo(requests()):
            names = {s.name for s in resp.list_services_response.service}
            break
    assert {"seglabel.v1.Segmenter", "grpc.health.v1.Health"} <= names


def test_generated_stubs_are_not_stale(tmp_path):
    """The stubs in the package are what `make proto` generates from proto/ right now."""
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("gen_proto", root / "scripts" / "gen_proto.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = gen.generate(tmp_path)
    current = root / "client" / "seglabel_api" / "pb" / "seglabel" / "v1"
    assert fresh
    for f in fresh:
        assert (current / f.name).read_text() == f.read_text(), f"{f.name} is stale: run make proto"


async def test_client_retries_unavailable_with_the_servers_pushback(make_server, photo_bytes):
    """A replica still loading answers UNAVAILABLE with grpc-retry-pushback-ms; the client's retry
    policy (gRPC's own) tries again and the call succeeds once the models are warm."""
    server = await make_server(load=False)
    loading = asyncio.create_task(server.load())
    async with client_for(server) as c:
        resp = await c.segment(photo_bytes, points_per_side=2)
    await loading
    assert resp.width > 0
    refused = server.service.metrics.value(
        "seglabel_request_failure_total", method="Segment", code="UNAVAILABLE"
    )
    assert refused >= 1  # answered UNAVAILABLE at least once, then retried
