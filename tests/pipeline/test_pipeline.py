"""Prompt modes, limits, CLIP unavailable, and the torch-free serving path."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from seglabel_server.errors import InvalidArgument, LimitExceeded
from seglabel_server.models.kinds import sam2
from seglabel_server.models.repository import ModelRepository
from seglabel_server.types import SegmentOptions

from .conftest import decoded, run_pipeline

LOOSE = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)


def test_points_prompt_gives_one_mask_or_three(ort_backend, tiny_repo, photo):
    pts = [(250.0, 200.0, 1), (100.0, 400.0, 0)]
    one, _ = run_pipeline(ort_backend, tiny_repo, SegmentOptions(prompt_type="points", points=pts), photo)
    three, _ = run_pipeline(
        ort_backend, tiny_repo, SegmentOptions(prompt_type="points", points=pts, multimask=True), photo
    )
    assert len(one.masks) == 1 and len(three.masks) == 3
    ious = [m.predicted_iou for m in three.masks]
    assert ious == sorted(ious, reverse=True)
    assert one.masks[0].area == decoded(one)[0].sum() and decoded(one)[0].shape == photo.shape[:2]
    assert len(one.labels) == 1 and 0.0 <= one.labels[0].confidence <= 1.0


def test_box_prompt_gives_one_mask_per_box_in_order(ort_backend, tiny_repo, photo):
    """One mask per box, each the mask of its own box whatever the others (random weights: where the
    mask lies is sam2's to say, see test_fidelity's box test; here, that boxes do not mix)."""
    boxes = [(10.0, 20.0, 200.0, 300.0), (300.0, 300.0, 500.0, 500.0)]
    res, _ = run_pipeline(ort_backend, tiny_repo, SegmentOptions(prompt_type="box", boxes=boxes), photo)
    assert len(res.masks) == 2 and all(m.point is None for m in res.masks)
    assert [lab.mask_index for lab in res.labels] == [0, 1]
    for i, box in enumerate(boxes):  # each alone gives the same mask
        alone, _ = run_pipeline(ort_backend, tiny_repo, SegmentOptions(prompt_type="box", boxes=[box]), photo)
        assert alone.masks[0].rle == res.masks[i].rle and alone.masks[0].bbox == res.masks[i].bbox


def test_grid_masks_carry_their_prompt_point_and_max_masks_holds(ort_backend, tiny_repo, photo):
    res, _ = run_pipeline(
        ort_backend, tiny_repo, SegmentOptions(points_per_side=4, max_masks=7, **LOOSE), photo
    )
    assert len(res.masks) == 7
    for m in res.masks:
        x, y = m.point
        assert 0 < x < photo.shape[1] and 0 < y < photo.shape[0]
        bx, by, bw, bh = m.bbox
        assert bw >= 1 and bh >= 1 and m.area <= bw * bh
    assert [m.index for m in res.masks] == list(range(7))
    stages = ("decode_image", "encoder", "decoder", "filter", "upsample", "crops", "clip")
    assert all(res.timings[stage] > 0 for stage in stages), res.timings  # each step ran and was timed
    # the steps partition the request's time: together no more than the total, and most of it
    assert 0.5 * res.timings["total"] <= sum(res.timings[s] for s in stages) <= res.timings["total"] + 1e-6


def test_iou_filter_inside_the_decoder_changes_no_result(ort_backend, tiny_repo, photo):
    """The decoder upscales only prompts with a candidate above pred_iou_thresh: the masks must be
    those of filtering after upscaling everything; nothing above it gives no mask (and no error)."""
    be = ort_backend
    size = ModelRepository.load(tiny_repo).sam2["image_size"]
    x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
    feats = sam2.encode(be, x)[0]
    coords = np.random.default_rng(1).uniform(0, size, (16, 1, 2)).astype(np.float32)
    labels = np.ones((16, 1), np.int32)
    full = sam2.decode(be, feats, coords, labels)
    assert full.kept.tolist() == list(range(16))
    best = np.sort(full.iou.max(axis=1))
    cut = float((best[9] + best[10]) / 2)
    part = sam2.decode(be, feats, coords, labels, cut)
    assert part.kept.tolist() == np.nonzero(full.iou.max(axis=1) > cut)[0].tolist() and len(part.kept) == 6
    np.testing.assert_allclose(part.masks.numpy(), full.masks.numpy()[part.kept], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(part.stability, full.stability[part.kept])
    none = sam2.decode(be, feats, coords, labels, float(best[-1]) + 1.0)
    assert len(none.kept) == 0 and none.masks.numpy().shape[0] == 0 and none.iou.shape == (16, 3)

    grid = dict(points_per_side=6, stability_score_thresh=0.0, box_nms_thresh=1.0, max_masks=1000)
    ious = np.sort(
        [
            m.predicted_iou
            for m in run_pipeline(
                be, tiny_repo, SegmentOptions(pred_iou_thresh=0.0, skip_labels=True, **grid), photo
            )[0].masks
        ]
    )
    t = float((ious[len(ious) // 2] + ious[len(ious) // 2 + 1]) / 2)
    res, _ = run_pipeline(be, tiny_repo, SegmentOptions(pred_iou_thresh=t, skip_labels=True, **grid), photo)
    assert len(res.masks) == int((ious > t).sum()) > 0
    assert all(m.predicted_iou > t for m in res.masks)
    empty, _ = run_pipeline(be, tiny_repo, SegmentOptions(pred_iou_thresh=1.0, **grid), photo)
    assert empty.masks == [] and empty.labels == []


@pytest.mark.parametrize(
    "params,err",
    [
        (SegmentOptions(prompt_type="points"), InvalidArgument),
        (SegmentOptions(prompt_type="box"), InvalidArgument),
        (SegmentOptions(prompt_type="points", points=[(9999.0, 1.0, 1)]), InvalidArgument),
        (SegmentOptions(prompt_type="box", boxes=[(50.0, 50.0, 10.0, 60.0)]), InvalidArgument),
        (SegmentOptions(points_per_side=1000), LimitExceeded),
        (SegmentOptions(pred_iou_thresh=1.5), InvalidArgument),
        (SegmentOptions(vocabulary=("dog", " ")), InvalidArgument),
        (SegmentOptions(vocabulary=tuple(f"w{i}" for i in range(5000))), LimitExceeded),
    ],
)
def test_bad_requests_raise_typed_errors(ort_backend, tiny_repo, photo, params, err):
    with pytest.raises(err):
        run_pipeline(ort_backend, tiny_repo, params, photo)


def test_segmentation_works_without_clip_and_says_why(tiny_repo_no_clip, photo):
    from seglabel_server.backends import create_backend

    backend = create_backend("onnxruntime", ModelRepository.load(tiny_repo_no_clip))
    res, _ = run_pipeline(
        backend, tiny_repo_no_clip, SegmentOptions(points_per_side=4, max_masks=5, **LOOSE), photo
    )
    assert len(res.masks) == 5 and res.labels == []
    assert "CLIP" in res.labels_unavailable_reason


def test_custom_vocabulary_and_min_confidence(ort_backend, tiny_repo, photo):
    res, _ = run_pipeline(
        ort_backend,
        tiny_repo,
        SegmentOptions(
            points_per_side=4, max_masks=4, vocabulary=("a", "b", "c"), top_k=5, min_confidence=0.99, **LOOSE
        ),
        photo,
    )
    assert {lab.label for lab in res.labels} <= {"a", "b", "c", "unknown"}
    assert all(len(lab.top_k) == 3 for lab in res.labels)  # top_k capped at the vocabulary size
    # tiny random CLIP is unsure of everything: under 0.99 -> "unknown", confidence still reported
    assert all(lab.label == "unknown" and lab.confidence < 0.99 for lab in res.labels)


def test_overlay_is_a_png_of_the_image_size(ort_backend, tiny_repo, photo):
    import io

    from PIL import Image

    res, _ = run_pipeline(
        ort_backend,
        tiny_repo,
        SegmentOptions(points_per_side=4, max_masks=3, return_overlay=True, **LOOSE),
        photo,
    )
    img = Image.open(io.BytesIO(res.overlay_png))
    assert img.format == "PNG" and img.size == (photo.shape[1], photo.shape[0])
    assert not np.array_equal(np.asarray(img.convert("RGB")), photo)  # masks drawn


def test_serving_path_never_imports_torch(tiny_repo):
    """Server, ONNX Runtime backend, a full request and the client, in a fresh interpreter; numpy's
    BLAS held to the server's --blas-threads (1: its idle threads spin and take cores)."""
    code = textwrap.dedent(f"""
        import asyncio, sys
        from seglabel_server.service.config import ServerConfig
        from seglabel_server.transport.server import create_server
        from seglabel_client.client import AsyncSegmenterClient
        from seglabel_client import sample_image_bytes

        async def main():
            server = await create_server(ServerConfig(port=0, models={str(tiny_repo)!r}))
            await server.load()
            async with AsyncSegmenterClient(f"127.0.0.1:{{server.port}}") as c:
                r = await c.segment(sample_image_bytes(), points_per_side=4, pred_iou_thresh=0,
                                    stability_score_thresh=0, box_nms_thresh=1, max_masks=3)
                assert r.mask_count == 3 and len(r.labels) == 3, r
            await server.stop(0)
            from threadpoolctl import threadpool_info
            blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
            print("BLAS", blas)
            assert blas and set(blas) == {{1}}, blas
            heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "sam2", "open_clip", "tensorrt"))
            print("HEAVY", heavy)
            assert not heavy, heavy

        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "HEAVY []" in proc.stdout
