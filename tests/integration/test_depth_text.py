"""Depth and OCR over gRPC: EstimateDepth, ExtractText on real text, Segment with_depth / with_text
(per-mask statistics recomputed here from what the server returned), and the statuses of a server
without them."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from seglabel_client import sample_image_bytes
from seglabel_client.analysis import scene_summary
from seglabel_client.client import AsyncSegmenterClient, depth_array, text_request

from tests.integration.conftest import budget_at_rest, in_flight, metric

LOOSE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)

# scikit-image's page photo (a photographed book page), line by line as printed.
PAGE_LINES = [
    "Region-based segmentation",
    "Let us first determine markers of the coins and the",
    "background. These markers are pixels that we can label",
    "unambiguously as either object or background. Here,",
    "the markers are found at the two extreme parts of the",
    "histogram of grey values:",
    ">>> markers = np.zeros_like(coins)",
]
RENDERED_LINES = ["Invoice 2026-11 total 348.50", "Ship to: Harbour Road 17", "Fragile, keep upright"]


def client_for(server) -> AsyncSegmenterClient:
    return AsyncSegmenterClient(f"127.0.0.1:{server.port}", timeout=120)


def levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def char_accuracy(got: str, want: str) -> float:
    return 1.0 - levenshtein(got, want) / len(want)


def font(size: int) -> ImageFont.FreeTypeFont:
    import matplotlib

    return ImageFont.truetype(
        str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size
    )


def png(img: np.ndarray | Image.Image) -> bytes:
    buf = io.BytesIO()
    (img if isinstance(img, Image.Image) else Image.fromarray(img)).save(buf, format="PNG")
    return buf.getvalue()


def rendered_text_image() -> tuple[bytes, list[tuple[int, int, int, int]]]:
    """Known lines drawn in a shipped TTF font; returns the PNG and each line's ink box."""
    img = Image.new("RGB", (720, 300), (250, 250, 245))
    draw, f = ImageDraw.Draw(img), font(34)
    boxes = []
    for i, line in enumerate(RENDERED_LINES):
        xy = (30, 30 + 90 * i)
        draw.text(xy, line, fill=(20, 20, 20), font=f)
        boxes.append(draw.textbbox(xy, line, font=f))
    return png(img), boxes


def decode_rle(size, counts: str) -> np.ndarray:
    """COCO compressed RLE -> bool [h, w] (column-major), written from the format's description."""
    h, w = size
    runs, i = [], 0
    while i < len(counts):
        x, k, more = 0, 0, True
        while more:
            c = ord(counts[i]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            i += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    flat = np.zeros(h * w, bool)
    pos, val = 0, False
    for r in runs:
        flat[pos : pos + r] = val
        pos += r
        val = not val
    return flat.reshape(w, h).T


def polygon_fraction(mask: np.ndarray, box) -> float:
    """Share of the pixel centres inside a text box that are mask pixels (matplotlib's test)."""
    from matplotlib.path import Path as MPath

    pts = np.array([(v.x, v.y) for v in box])
    x0, y0 = np.floor(pts.min(0)).astype(int)
    x1, y1 = np.ceil(pts.max(0)).astype(int)
    ys, xs = np.mgrid[max(y0, 0) : min(y1 + 1, mask.shape[0]), max(x0, 0) : min(x1 + 1, mask.shape[1])]
    inside = MPath(pts).contains_points(np.c_[xs.ravel(), ys.ravel()], radius=1e-9).reshape(xs.shape)
    return float(mask[ys, xs][inside].mean()) if inside.any() else 0.0


async def test_estimate_depth_returns_the_map_its_range_and_a_png(make_server, scene_repo, photo_bytes):
    server = await make_server(repo=scene_repo)
    async with client_for(server) as c:
        info = await c.server_info()
        assert {"depth_estimator", "ocr_det", "ocr_cls", "ocr_rec"} <= {m.name for m in info.models}
        assert info.depth_unavailable_reason == "" and info.text_unavailable_reason == ""
        up = await c.upload(photo_bytes)
        resp = await c.estimate_depth(file_id=up.file_id)
    d = resp.depth
    assert (d.width, d.height) == (up.width, up.height)
    values = depth_array(d)
    assert values.shape == (up.height, up.width)
    assert values.min() == pytest.approx(d.min, abs=1e-12) and values.max() == pytest.approx(d.max, rel=1e-6)
    assert d.max > d.min  # random weights, but not a constant map
    colour = np.asarray(Image.open(io.BytesIO(d.colorized_png)))
    assert colour.shape == (up.height, up.width, 3)
    # Brighter is nearer: the pixel with the largest value is at least as bright as the smallest's.
    hi, lo = np.unravel_index(values.argmax(), values.shape), np.unravel_index(values.argmin(), values.shape)
    assert colour[hi].sum() > colour[lo].sum()
    assert resp.timings.total_ms > 0 and resp.timings.depth_ms > 0


async def test_ocr_reads_rendered_text_and_a_real_photo(make_server, scene_repo):
    import skimage.data

    server = await make_server(repo=scene_repo)
    image, ink = rendered_text_image()
    async with client_for(server) as c:
        rendered = await c.extract_text(image)
        page = await c.extract_text(png(np.stack([skimage.data.page()] * 3, -1)))
    got = [ln.text for ln in rendered.text.lines]
    assert char_accuracy("\n".join(got), "\n".join(RENDERED_LINES)) >= 0.9, got
    assert len(got) == len(RENDERED_LINES)
    for line, (x0, y0, x1, y1) in zip(rendered.text.lines, ink):  # each box surrounds its line's ink
        xs, ys = [v.x for v in line.box], [v.y for v in line.box]
        assert len(line.box) == 4 and line.confidence > 0.5
        assert min(xs) <= x0 + 4 and max(xs) >= x1 - 4 and min(ys) <= y0 + 4 and max(ys) >= y1 - 4
        assert max(ys) - min(ys) < 2.5 * (y1 - y0)
    acc = char_accuracy(page.text.full_text, "\n".join(PAGE_LINES))
    assert acc >= 0.9, (acc, page.text.full_text)
    assert page.text.full_text == "\n".join(ln.text for ln in page.text.lines)
    tops = [min(v.y for v in ln.box) for ln in page.text.lines]
    assert tops == sorted(tops)  # reading order


async def test_segment_with_depth_and_text_statistics_recomputed(make_server, scene_repo):
    """Per-mask depth statistics and text lines, recomputed here from the returned depth map, the
    masks' RLE and the OCR boxes."""
    server = await make_server(repo=scene_repo)
    photo = np.asarray(Image.open(io.BytesIO(sample_image_bytes("coffee.jpg"))).convert("RGB")).copy()
    text, _ = rendered_text_image()
    banner = np.asarray(Image.open(io.BytesIO(text)).resize((360, 150)))
    photo[20:170, 20:380] = banner  # a real photo with a label on it
    async with client_for(server) as c:
        resp = await c.segment(png(photo), points_per_side=4, max_masks=12, with_depth=True, with_text=True,
                               overlay=False, **LOOSE)  # fmt: skip
    assert resp.success and resp.mask_count > 1
    values = depth_array(resp.depth)
    by_index = {d.mask_index: d for d in resp.mask_depth}
    assert sorted(by_index) == [m.index for m in resp.masks]
    medians = {}
    for m in resp.masks:
        mask = decode_rle(list(m.rle.size), m.rle.counts)
        assert mask.sum() == m.area
        d = by_index[m.index]
        pix = values[mask]
        assert d.median == pytest.approx(float(np.median(pix)), rel=1e-6, abs=1e-12)
        assert d.min == pytest.approx(float(pix.min()), rel=1e-6, abs=1e-12)
        assert d.max == pytest.approx(float(pix.max()), rel=1e-6, abs=1e-12)
        medians[m.index] = d.median
        inside = set(next(t for t in resp.mask_text if t.mask_index == m.index).line_indices)
        for j, line in enumerate(resp.text.lines):
            f = polygon_fraction(mask, line.box)
            if f >= 0.55:
                assert j in inside, (m.index, j, f)
            elif f <= 0.45:
                assert j not in inside, (m.index, j, f)
    ranks = sorted(resp.mask_depth, key=lambda d: d.rank)
    assert [d.rank for d in ranks] == list(range(len(ranks)))
    assert all(a.median >= b.median for a, b in zip(ranks, ranks[1:]))  # front (near) to back
    assert len(resp.text.lines) >= 2 and resp.timings.depth_ms > 0 and resp.timings.text_ms > 0
    summary = scene_summary(resp)
    assert summary.startswith(f"Scene: {resp.mask_count} objects, front to back")


async def test_stream_sends_depth_and_text_after_the_masks(make_server, scene_repo, photo_bytes):
    server = await make_server(repo=scene_repo)
    async with client_for(server) as c:
        events = [ev async for ev in c.stream_segment(photo_bytes, points_per_side=4, with_depth=True,
                                                       with_text=True, overlay=False, **LOOSE)]  # fmt: skip
    kinds = [ev.WhichOneof("event") for ev in events]
    assert kinds[0] == "accepted" and kinds[-1] == "summary"
    last_masks = max(i for i, k in enumerate(kinds) if k in ("masks", "label_update"))
    assert kinds.count("depth") == 1 and kinds.count("text") == 1
    assert kinds.index("depth") > last_masks and kinds.index("text") > last_masks
    n = sum(len(ev.masks.masks) for ev in events if ev.HasField("masks"))
    depth = events[kinds.index("depth")].depth
    assert len(depth.mask_depth) == n and depth.depth.width > 0
    summary = events[-1].summary
    assert not summary.HasField("depth") and not summary.masks and summary.timings.depth_ms > 0


async def test_without_depth_or_ocr_models_the_server_says_why(make_server, tiny_repo, photo_bytes):
    server = await make_server(repo=tiny_repo)
    async with client_for(server) as c:
        info = await c.server_info()
        assert (
            "no depth models" in info.depth_unavailable_reason and "--depth" in info.depth_unavailable_reason
        )
        assert "no ocr models" in info.text_unavailable_reason
        for call in (c.estimate_depth(photo_bytes), c.extract_text(photo_bytes)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "not available on this server" in err.value.details()
        resp = await c.segment(photo_bytes, points_per_side=2, with_depth=True, with_text=True, **LOOSE)
    assert not resp.success and resp.mask_count > 0
    assert "depth" in resp.depth_unavailable_reason and "ocr" in resp.text_unavailable_reason
    assert not resp.HasField("depth") and not resp.HasField("text")


async def test_depth_and_text_share_the_uploads_limits_and_statuses(make_server, scene_repo, photo_bytes):
    server = await make_server(repo=scene_repo, max_memory_mb=1)
    async with client_for(server) as c:
        cases = [
            (c.estimate_depth(file_id="0" * 64), grpc.StatusCode.NOT_FOUND),
            (c.extract_text(file_id="nope"), grpc.StatusCode.INVALID_ARGUMENT),
            (c.estimate_depth(b"not an image"), grpc.StatusCode.INVALID_ARGUMENT),
            (c.estimate_depth(photo_bytes), grpc.StatusCode.RESOURCE_EXHAUSTED),  # over the 1 MB budget
            (c.extract_text(photo_bytes, box_thresh=2.0), grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for call, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            assert err.value.code() == code, err.value.details()


async def test_cancelled_ocr_stops_and_metrics_cover_the_new_stages(make_server, scene_repo):
    server = await make_server(repo=scene_repo)
    image, _ = rendered_text_image()
    big = png(np.asarray(Image.open(io.BytesIO(image)).resize((2160, 900))))
    metrics = server.service.metrics
    async with client_for(server) as c:
        call = c.stub.ExtractText(text_request(big), timeout=120)
        await asyncio.sleep(0.3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        for _ in range(200):  # the cancelled OCR thread stops at its next model call
            if in_flight(server) == 0:
                break
            await asyncio.sleep(0.05)
        assert budget_at_rest(server)
        assert metrics.value("seglabel_request_failure_total", method="ExtractText", code="CANCELLED") == 1
        await c.estimate_depth(sample_image_bytes("coffee.jpg"))
        await c.extract_text(image)
    for stage in ("depth", "ocr_det", "ocr_cls", "ocr_rec"):
        assert metrics.value("seglabel_execution_count_total", stage=stage) > 0, stage
    stages = ("encoder", "decoder", "clip", "text", "depth", "ocr_det", "ocr_cls", "ocr_rec")
    assert not any(metric(server, "seglabel_queue_depth", stage=s) for s in stages)  # nothing left behind
    assert not any(metric(server, "seglabel_backlog_depth", stage=s) for s in stages)
