"""The small pure functions behind with_depth / with_text, and the depth and OCR kinds' batching."""

from __future__ import annotations

import numpy as np
from seglabel_server.models.kinds import get
from seglabel_server.pipeline import render, scene
from seglabel_server.types import MaskDepth


def test_mask_depth_and_front_to_back_rank():
    depth = np.arange(12, dtype=np.float32).reshape(3, 4)
    near = np.zeros((3, 4), bool)
    near[2, 2:] = True  # values 10, 11
    far = np.zeros((3, 4), bool)
    far[0, :3] = True  # values 0, 1, 2
    stats = [scene.mask_depth(0, far, depth), scene.mask_depth(1, near, depth)]
    assert (stats[0].median, stats[0].min, stats[0].max) == (1.0, 0.0, 2.0)
    assert (stats[1].median, stats[1].min, stats[1].max) == (10.5, 10.0, 11.0)
    scene.rank_front_to_back(stats)
    assert [s.rank for s in stats] == [1, 0]  # larger inverse depth is nearer
    ties = [MaskDepth(i, 1.0, 1.0, 1.0) for i in range(3)]
    scene.rank_front_to_back(ties)
    assert [t.rank for t in ties] == [0, 1, 2]
    empty = scene.mask_depth(2, np.zeros((3, 4), bool), depth)
    assert np.isnan(empty.median)


def test_text_line_inside_a_mask_by_half_of_its_box():
    class Line:
        def __init__(self, text, box):
            self.text, self.box = text, box

    mask = np.zeros((40, 60), bool)
    mask[:, :30] = True
    lines = [
        Line("left", [(2, 5), (20, 5), (20, 15), (2, 15)]),  # all inside
        Line("split", [(20, 20), (50, 20), (50, 30), (20, 30)]),  # about a third inside
        Line("edge", [(55, 35), (70, 35), (70, 45), (55, 45)]),  # partly off the image, outside
    ]
    boxes = [scene.box_pixels(ln.box, 40, 60) for ln in lines]
    assert scene.inside_fraction(mask, *boxes[0]) == 1.0
    assert 0.25 < scene.inside_fraction(mask, *boxes[1]) < 0.45
    assert scene.inside_fraction(mask, *boxes[2]) == 0.0
    got = scene.mask_text(7, mask, boxes, lines)
    assert (got.mask_index, got.line_indices, got.text) == (7, [0], "left")


def test_depth_codes_decode_to_the_values_the_statistics_use():
    values = np.random.default_rng(0).random((20, 30)).astype(np.float32) * 3 + 1
    codes, lo, hi, decoded = render.quantize16(values)
    assert codes.dtype == np.uint16 and codes.min() == 0 and codes.max() == 65535
    assert (lo, hi) == (float(values.min()), float(values.max()))
    assert np.abs(decoded - values).max() <= (hi - lo) / 65535
    flat = render.quantize16(np.full((4, 4), 2.5, np.float32))
    assert not flat[0].any() and np.all(flat[3] == 2.5)


def test_ocr_calls_batch_by_shape_and_split_back():
    class Backend:
        def run(self, model, feeds):
            return {"some_output_name": feeds["x"].sum(axis=(2, 3))}

        def to_host(self, x):
            return x

    rec = get("ocr_rec")
    a, b = np.ones((2, 3, 48, 100), np.float32), np.full((1, 3, 48, 100), 2, np.float32)
    assert rec.key(a) == rec.key(b) != rec.key(np.ones((1, 3, 48, 120), np.float32))
    out = rec.execute(Backend(), [a, b])
    assert [o.shape for o in out] == [(2, 3), (1, 3)] and out[1][0, 0] == 2 * 48 * 100
    depth = get("depth")
    imgs = [np.zeros((3, 8, 8), np.float32), np.ones((3, 8, 8), np.float32)]

    class DepthBackend(Backend):
        def run(self, model, feeds):
            return {"depth": feeds["images"][:, 0]}

    res = depth.execute(DepthBackend(), imgs)
    assert [r.shape for r in res] == [(8, 8), (8, 8)] and res[1].max() == 1
