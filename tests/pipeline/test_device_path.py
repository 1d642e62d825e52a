"""The torch backend's device mask-and-label path (backends/torch_ops.py) against the host path,
on CPU torch: same masks, boxes, areas, scores and labels for grid, points and box prompts on both
bundled photos; no full-size mask array in host memory; the multi-image decoder against one call
per image."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from seglabel_client import sample_image_bytes
from seglabel_export.parity import rel_l2
from seglabel_server import amg
from seglabel_server.backends import create_backend
from seglabel_server.models.images import decode_image, sam_preprocess
from seglabel_server.models.kinds import sam2
from seglabel_server.models.repository import ModelRepository
from seglabel_server.service import build_pipeline
from seglabel_server.service.config import ServerConfig
from seglabel_server.types import RequestContext, SegmentOptions

from .conftest import crisp, pair_ious, rles

PHOTOS = ("astronaut.jpg", "coffee.jpg")
PARAMS = {
    "grid-all": SegmentOptions(
        points_per_side=8, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0, max_masks=192
    ),
    "grid-filtered": SegmentOptions(
        points_per_side=8, pred_iou_thresh=0.6, stability_score_thresh=0.9, box_nms_thresh=0.7, max_masks=100
    ),
    "points-multimask": SegmentOptions(
        prompt_type="points", points=[(100, 100, 1), (200, 220, 0)], multimask=True
    ),
    "points": SegmentOptions(prompt_type="points", points=[(300, 150, 1)]),
    "boxes": SegmentOptions(prompt_type="box", boxes=[(50, 60, 300, 400), (10, 10, 200, 200)]),
}


@pytest.fixture(scope="module")
def pipes(tiny_repo):
    repo = ModelRepository.load(tiny_repo)
    out = {}
    for path in ("host", "device"):
        be = crisp(create_backend("torch", repo, mask_path=path))
        assert (be.device_ops() is not None) == (path == "device")
        out[path] = build_pipeline(be, repo, ServerConfig())
        assert out[path].pipeline.mask_path.name == path  # chosen once, when the pipeline is built
    yield out
    for p in out.values():
        p.close()


@pytest.fixture(scope="module")
def images():
    return {name: decode_image(sample_image_bytes(name)) for name in PHOTOS}


def run(pipe, params, image):
    return asyncio.run(pipe.run(params, image, RequestContext()))


@pytest.mark.parametrize("name", PHOTOS)
@pytest.mark.parametrize("case", list(PARAMS))
def test_device_path_equals_host_path(pipes, images, name, case):
    image, params = images[name], PARAMS[case]
    host, dev = run(pipes["host"], params, image), run(pipes["device"], params, image)
    assert len(host.masks) == len(dev.masks) > 0
    # mask for mask, in order: RLE equal, or IoU >= 0.999 where the resize arithmetic differs
    # (Pillow's fixed-point weights vs torch's float ones on coffee.jpg's 600 -> 256: 0.1% of the
    # input pixels one level apart)
    ious = np.array([pair_ious([a], [b])[0] for a, b in zip(rles(dev), rles(host))])
    exact = sum(a.rle == b.rle for a, b in zip(dev.masks, host.masks))
    print(f"{name} {case}: {len(dev.masks)} masks, {exact} RLE-equal, min IoU {ious.min():.5f}")
    assert ious.min() >= 0.999
    same_input = name == "astronaut.jpg"  # 512 -> 256 by two: the same encoder input pixels
    if same_input:
        # RLE-equal but where a pixel's logit sits at the threshold within float rounding (torch's
        # upsample on the device, the host's own): with the tiny weights of 2026-12-07, one mask of
        # 192 differs by one pixel (IoU 0.99999)
        assert exact >= len(dev.masks) - max(1, len(dev.masks) // 100)
    tol = 1e-4 if same_input else 1e-2
    for a, b in zip(dev.masks, host.masks):
        assert np.allclose(a.bbox, b.bbox, atol=1.0) and abs(a.area - b.area) <= 0.002 * b.area + 2
        assert a.predicted_iou == pytest.approx(b.predicted_iou, abs=tol)
        assert a.stability_score == pytest.approx(b.stability_score, abs=tol)
        assert a.point == b.point
    assert [lab.label for lab in dev.labels] == [lab.label for lab in host.labels]
    np.testing.assert_allclose(
        [lab.confidence for lab in dev.labels], [lab.confidence for lab in host.labels], atol=0.01
    )


def test_device_crops_match_host_crops(pipes, images):
    """The crops themselves: mean absolute difference in 8-bit levels, reported; labels (above)
    do not change."""
    clip = pipes["host"].pipeline.labels.clip
    for name, image in images.items():
        result = run(pipes["host"], PARAMS["grid-all"], image)
        masks = result.masks[:32]
        full = [amg.decode_rle(m.rle) for m in masks]
        host = pipes["host"].pipeline.mask_path.cut(image, masks, full)
        path = pipes["device"].pipeline.mask_path
        c, ops = path.crop, path.ops
        dev = ops.crops(ops.upload(image), torch.from_numpy(np.stack(full)), [m.bbox for m in masks], c.size,
                        c.mean, c.std, c.context, c.background_keep)  # fmt: skip
        levels = np.abs(host - dev.numpy()) * np.asarray(clip["std"]).reshape(1, 3, 1, 1) * 255
        print(
            f"{name}: CLIP crops mean |diff| {levels.mean():.2f} levels (max {levels.max():.1f}) over {len(masks)}"
        )
        assert dev.shape == host.shape and levels.mean() < 2.0


def test_overlay_from_device_masks_equals_the_host_overlay(pipes, images):
    params = SegmentOptions(
        points_per_side=4, pred_iou_thresh=0, stability_score_thresh=0, max_masks=8, return_overlay=True
    )
    host = run(pipes["host"], params, images["astronaut.jpg"])
    dev = run(pipes["device"], params, images["astronaut.jpg"])
    assert len(dev.masks) > 0 and dev.overlay_png == host.overlay_png


def test_no_full_size_mask_reaches_the_host(pipes, images, monkeypatch):
    """Every tensor the device path brings to host memory (Tensor.numpy, which np.asarray and
    .cpu().numpy() go through on CPU torch, and Tensor.tolist) is recorded: none is shaped like an
    image, and all of them together are the answers' COCO RLE strings (written on the device; these
    random-weight masks are ragged: many runs per column) plus a few numbers per mask (area, box,
    scores, embedding)."""
    seen: list[tuple[tuple[int, ...], int]] = []
    numpy, tolist = torch.Tensor.numpy, torch.Tensor.tolist

    def rec_numpy(self, *a, **k):
        seen.append((tuple(self.shape), self.nbytes))
        return numpy(self, *a, **k)

    def rec_tolist(self):
        seen.append((tuple(self.shape), self.nbytes))
        return tolist(self)

    image = images["coffee.jpg"]
    h, w = image.shape[:2]
    run(pipes["device"], PARAMS["points"], image)  # the vocabulary's text embeddings, cached
    monkeypatch.setattr(torch.Tensor, "numpy", rec_numpy)
    monkeypatch.setattr(torch.Tensor, "tolist", rec_tolist)
    result = run(pipes["device"], PARAMS["grid-all"], image)
    monkeypatch.undo()
    k = len(result.masks)
    copied = sum(nbytes for _, nbytes in seen)
    answers = sum(len(m.rle["counts"]) for m in result.masks)  # the RLE strings' bytes
    print(
        f"{k} masks of {w}x{h}: {len(seen)} copies to the host, {copied} bytes in all, {answers} of them "
        f"the answers' RLE strings (largest copy {max(nbytes for _, nbytes in seen)} bytes)"
    )
    assert k > 100 and seen and len(result.labels) == k
    assert not any((h in s and w in s) or h * w in s for s, _ in seen)
    assert answers <= copied <= answers + 256 * k


def test_multi_image_decoder_equals_one_call_per_image(tiny_repo, images):
    repo = ModelRepository.load(tiny_repo)
    per_image = create_backend(
        "torch", repo, decoder_layout="per-image", models=["sam2_image_encoder", "sam2_mask_decoder"]
    )
    multi = create_backend(
        "torch", repo, decoder_layout="multi-image", models=["sam2_image_encoder", "sam2_mask_decoder"]
    )
    assert "multi_image" in multi.capabilities and "multi_image" not in per_image.capabilities
    s, meta = repo.sam2["image_size"], repo.sam2
    feats = [
        sam2.encode(per_image, sam_preprocess(img, s, meta["pixel_mean"], meta["pixel_std"])[None])[0]
        for img in images.values()
    ]
    rng = np.random.default_rng(0)
    reqs = [
        sam2.DecodeRequest(
            f, rng.uniform(0, s, (n, 2, 2)).astype(np.float32), np.ones((n, 2), np.int32), cut, True
        )
        for f, n in zip(feats + feats[:1], (5, 7, 3))
        for cut in [float("-inf")]
    ]
    assert len({sam2.DECODER.key(r) for r in reqs}) == 1  # one batch for both images
    mixed = sam2.DECODER.execute(multi, reqs)
    for r, got in zip(reqs, mixed):
        ref = sam2.decode(per_image, r.features, r.coords, r.labels)
        assert got.kept.tolist() == ref.kept.tolist()
        assert rel_l2(got.iou, ref.iou) < 1e-4 and rel_l2(got.masks.numpy(), ref.masks.numpy()) < 1e-4
        assert rel_l2(got.single_mask.numpy(), ref.single_mask.numpy()) < 1e-4
    # min_iou inside the decoder: the kept prompts, per image, as one call per image keeps them
    best = np.sort(np.concatenate([o.iou.max(axis=1) for o in mixed]))
    cut = float((best[5] + best[6]) / 2)
    cut_reqs = [sam2.DecodeRequest(r.features, r.coords, r.labels, cut, True) for r in reqs]
    for r, got in zip(cut_reqs, sam2.DECODER.execute(multi, cut_reqs)):
        ref = sam2.decode(per_image, r.features, r.coords, r.labels, cut)
        assert got.kept.tolist() == ref.kept.tolist()
        assert rel_l2(got.masks.numpy(), ref.masks.numpy()) < 1e-4 if len(ref.kept) else len(got.kept) == 0


def test_onnxruntime_io_binding_equals_plain_runs(tiny_repo, images, monkeypatch):
    """ONNX Runtime with IO binding (the CUDA provider's path, exercised here on the CPU provider):
    the encoder's features stay OrtValues and reach the decoder by pointer, a one-image slice of an
    encoder batch is a view; results equal plain runs."""
    from seglabel_server.backends.onnxruntime import OrtDeviceArray

    repo = ModelRepository.load(tiny_repo)
    plain, bound = create_backend("onnxruntime", repo), create_backend("onnxruntime", repo, io_binding=True)
    assert not plain.io_binding and bound.io_binding
    s, meta = repo.sam2["image_size"], repo.sam2
    x = np.stack([sam_preprocess(im, s, meta["pixel_mean"], meta["pixel_std"]) for im in images.values()])
    fa, fb = sam2.encode(plain, x), sam2.encode(bound, x)
    assert all(isinstance(v, OrtDeviceArray) for f in fb for v in f.arrays.values())
    assert fb[1].arrays["image_embed"].data_ptr() > fb[0].arrays["image_embed"].data_ptr()  # a view
    copies = []
    to_numpy = OrtDeviceArray.__array__
    monkeypatch.setattr(
        OrtDeviceArray,
        "__array__",
        lambda self, *a, **k: copies.append(self.shape) or to_numpy(self, *a, **k),
    )
    coords = np.random.default_rng(0).uniform(0, s, (6, 1, 2)).astype(np.float32)
    labels = np.ones((6, 1), np.int32)
    for i in range(2):
        a, b = sam2.decode(plain, fa[i], coords, labels), sam2.decode(bound, fb[i], coords, labels)
        np.testing.assert_array_equal(a.kept, b.kept)
        assert rel_l2(b.masks.numpy(), a.masks.numpy()) < 1e-6 and rel_l2(b.iou, a.iou) < 1e-6
    feature_shapes = {tuple(v.shape) for v in fb[0].arrays.values()}
    assert copies and not feature_shapes & set(copies)  # decoder outputs came to the host, features never
    monkeypatch.undo()
    params = SegmentOptions(
        points_per_side=8, pred_iou_thresh=0, stability_score_thresh=0, box_nms_thresh=1.0, max_masks=40
    )
    for name, image in images.items():
        results = []
        for be in (plain, bound):
            pipe = build_pipeline(be, repo, ServerConfig())
            try:
                results.append(run(pipe, params, image))
            finally:
                pipe.close()
        ra, rb = results
        assert len(ra.masks) == len(rb.masks) == 40, name
        assert [m.rle for m in ra.masks] == [m.rle for m in rb.masks]
        assert [lab.label for lab in ra.labels] == [lab.label for lab in rb.labels]


def _masks_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    framed = np.zeros((2, 700, 900), bool)
    framed[0, 0, 0] = True  # one pixel, the first
    framed[1, 5:690, 7:899] = True  # one large run: counts past 2^14, several chunks each
    return [
        np.zeros((1, 5, 7), bool),  # all zeros: one run
        np.ones((2, 5, 7), bool),  # starts with 1: an empty run of zeros first
        rng.random((6, 9, 11)) > 0.5,  # ragged: many short runs
        rng.random((3, 1, 1)) > 0.5,
        rng.random((4, 300, 200)) > 0.97,
        framed,
    ]


@pytest.mark.parametrize("case", range(6))
def test_coco_rle_bytes_are_pycocotools_strings(case):
    """The device-written COCO RLE strings, byte for byte what pycocotools writes for the same masks."""
    from pycocotools import mask as mask_utils
    from seglabel_server.backends.torch_ops import coco_rle_bytes

    masks = _masks_cases()[case]
    k, h, w = masks.shape
    text, nbytes = coco_rle_bytes(torch.from_numpy(masks).transpose(1, 2).reshape(k, h * w))
    data, ends = text.numpy().tobytes(), np.cumsum(nbytes.numpy())
    ours = [data[e - n : e] for e, n in zip(ends, nbytes.numpy())]
    assert ours == [mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"] for m in masks]
