"""Property-based abuse of SegmentRequest: every answer is OK or a documented status, never UNKNOWN or
INTERNAL, and the server still answers a good request afterwards."""

from __future__ import annotations

import asyncio
import io
import threading

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from seglabel_api.pb.seglabel.v1 import seglabel_pb2 as pb
from seglabel_client.client import SegmenterClient
from seglabel_server.service.config import ServerConfig
from seglabel_server.transport.server import create_server

pytestmark = pytest.mark.slow  # 500 generated requests

DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


@pytest.fixture(scope="module")
def live_server(tiny_repo):
    """A real server in its own thread and event loop, shared by every example."""
    box: dict = {}
    ready = threading.Event()

    def run():
        async def main():
            server = await create_server(ServerConfig(port=0, models=str(tiny_repo)))
            await server.load()
            box.update(port=server.port, loop=asyncio.get_running_loop(), stop=asyncio.Event())
            ready.set()
            await box["stop"].wait()
            await server.stop(0)

        asyncio.run(main())

    th = threading.Thread(target=run, daemon=True)
    th.start()
    assert ready.wait(180)
    yield box["port"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    th.join(30)


def _png(side: int) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(side)
    Image.fromarray(rng.integers(0, 255, (side, side, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


GOOD = _png(48)
IMAGES = [GOOD, b"", b"not an image", GOOD[: len(GOOD) // 2], _png(4), b"%!PS-Adobe-3.0 EPSF-3.0\n"]
f32 = st.floats(width=32, allow_nan=True, allow_infinity=True)
small_or_wild = st.one_of(st.integers(-3, 12), st.sampled_from([64, 65, 1001, 2**31 - 1, -(2**31)]))
label = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@st.composite
def requests(draw, file_id: str):
    req = pb.SegmentRequest(
        prompt_type=draw(st.integers(-1, 5)),
        points_per_side=draw(small_or_wild),
        max_masks=draw(small_or_wild),
        vocabulary=draw(st.lists(label, max_size=4)),
        top_k=draw(small_or_wild),
        return_overlay=draw(st.booleans()),
        skip_labels=draw(st.booleans()),
        multimask=draw(st.booleans()),
        points=[pb.Point(x=x, y=y, positive=p) for x, y, p in draw(st.lists(st.tuples(f32, f32, st.booleans()), max_size=4))],
        boxes=[pb.Box(x0=a, y0=b, x1=c, y1=d) for a, b, c, d in draw(st.lists(st.tuples(f32, f32, f32, f32), max_size=3))],
    )  # fmt: skip
    for name in ("min_confidence", "pred_iou_thresh", "stability_score_thresh", "box_nms_thresh"):
        value = draw(st.none() | f32)
        if value is not None:
            setattr(req, name, value)
    source = draw(st.sampled_from(["image", "file_id", "bad_id"]))
    if source == "image":
        req.image = draw(st.sampled_from(IMAGES))
    elif source == "file_id":
        req.file_id = file_id
    else:
        req.file_id = draw(st.text(st.characters(blacklist_categories=("Cs",)), max_size=80))
    return req


def test_no_request_gets_unknown_or_internal_or_kills_the_server(live_server):
    with SegmenterClient(f"127.0.0.1:{live_server}", timeout=60) as c:
        file_id = c.upload(GOOD).file_id
        seen: dict = {}

        @settings(max_examples=500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(requests(file_id))
        def check(req):
            try:
                c.stub.Segment(req, timeout=60)
                seen["OK"] = seen.get("OK", 0) + 1
            except grpc.RpcError as exc:
                assert exc.code() in DOCUMENTED, (exc.code(), exc.details(), req)
                seen[exc.code().name] = seen.get(exc.code().name, 0) + 1

        check()
        print("statuses over 500 examples:", seen)
        assert seen.get("OK", 0) > 0 and seen.get("INVALID_ARGUMENT", 0) > 0
        good = c.segment(GOOD, points_per_side=2, max_masks=2, pred_iou_thresh=0, stability_score_thresh=0)
        assert good.mask_count >= 1
