"""Sustained load on a real server (tiny models): admitted work always finishes, even when it is
more than the stage queues hold; refusal happens only at the door, before ``accepted``, with a
retry pushback."""

from __future__ import annotations

import asyncio

import grpc
from seglabel_client.client import AsyncSegmenterClient, build_request

from tests.integration.conftest import budget_at_rest, in_flight, metric

from ..conftest import distinct_images

LOOSE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


async def stream(c: AsyncSegmenterClient, image: bytes, **kw) -> tuple[str, list[str]]:
    """(status name, event kinds received)."""
    kinds: list[str] = []
    try:
        async for ev in c.stream_segment(image, **kw):
            kinds.append(ev.WhichOneof("event"))
        return "OK", kinds
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, kinds


async def test_more_streams_than_the_queues_hold_all_finish(make_server):
    """24 streams of 5 decoder calls and several CLIP calls each, on stage windows of 4 items: the
    work waits for room instead of being refused, and every stream ends with its answer."""
    server = await make_server(max_inflight=32, max_queue=4, max_batch={"decoder": 8, "clip": 4})
    most = {"decoder": 0, "clip": 0}
    stop = asyncio.Event()

    async def watch() -> None:
        while not stop.is_set():
            for s in most:
                most[s] = max(most[s], metric(server, "seglabel_backlog_depth", stage=s))
                assert metric(server, "seglabel_queue_depth", stage=s) <= 4
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    images = distinct_images(24)
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}", timeout=300) as c:
        results = await asyncio.gather(
            *[stream(c, img, points_per_side=6, max_masks=12, overlay=False, **LOOSE) for img in images]
        )
    stop.set()
    await watcher
    assert [code for code, _ in results] == ["OK"] * 24
    assert all(kinds[0] == "accepted" and kinds[-1] == "summary" for _, kinds in results)
    assert most["decoder"] > 0  # the work did outgrow the window
    assert budget_at_rest(server)


async def test_a_full_server_refuses_up_front_with_a_pushback(make_server, photo_bytes):
    """With admission full, new streams are refused before any event (RESOURCE_EXHAUSTED, with
    grpc-retry-pushback-ms); the admitted ones finish; then a new one is admitted."""
    server = await make_server(max_inflight=2)
    images = distinct_images(2, size=(256, 256))
    async with AsyncSegmenterClient(f"127.0.0.1:{server.port}", timeout=300) as c:
        held = [asyncio.ensure_future(stream(c, img, points_per_side=16, **LOOSE)) for img in images]
        for _ in range(2000):
            if in_flight(server) == 2:
                break
            await asyncio.sleep(0.005)
        refused = []
        for _ in range(6):
            call = c.stub.StreamSegment(build_request(photo_bytes, points_per_side=4))
            try:
                await call.read()
                raise AssertionError("a stream was admitted over the limit")
            except grpc.aio.AioRpcError as exc:
                trailers = dict(exc.trailing_metadata() or ())
                refused.append(
                    (exc.code(), "in flight" in exc.details(), int(trailers["grpc-retry-pushback-ms"]))
                )
        assert all(code == grpc.StatusCode.RESOURCE_EXHAUSTED and said for code, said, _ in refused)
        assert all(50 <= ms <= 10_000 for _, _, ms in refused)
        assert [code for code, _ in await asyncio.gather(*held)] == ["OK", "OK"]
        code, kinds = await stream(c, photo_bytes, points_per_side=4)
        assert code == "OK" and kinds[0] == "accepted"
    assert server.service.metrics.value("seglabel_rejected_total", stage="admission") == 6
