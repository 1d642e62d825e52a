"""The numpy post-processing functions against sam2's / torchvision's own implementations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sam2.utils import amg as sam_amg
from seglabel_server import amg, rle
from torchvision.ops import batched_nms


@pytest.mark.parametrize("n", [1, 4, 16, 32])
def test_point_grid_matches_sam2(n):
    np.testing.assert_allclose(amg.build_point_grid(n), sam_amg.build_point_grid(n))


def test_stability_matches_sam2():
    logits = torch.randn(12, 40, 50) * 3
    ref = sam_amg.calculate_stability_score(logits, 0.0, 1.0).numpy()
    np.testing.assert_allclose(amg.stability_score(logits.numpy(), 0.0, 1.0), ref, rtol=1e-6)


def test_masks_to_boxes_matches_sam2():
    rng = np.random.default_rng(0)
    masks = np.zeros((6, 30, 40), bool)
    for i in range(5):
        y0, x0 = rng.integers(0, 20, 2)
        masks[i, y0 : y0 + rng.integers(1, 10), x0 : x0 + rng.integers(1, 20)] = True
    ref = sam_amg.batched_mask_to_box(torch.from_numpy(masks)).numpy()
    np.testing.assert_array_equal(amg.masks_to_boxes(masks), ref)
    assert amg.masks_to_boxes(masks)[5].tolist() == [0, 0, 0, 0]  # empty mask


@pytest.mark.parametrize("thresh", [0.3, 0.5, 0.7, 0.95])
def test_nms_matches_torchvision(thresh):
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 100, (60, 2))
    wh = rng.uniform(5, 40, (60, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.random(60).astype(np.float32)
    ref = batched_nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.zeros(60), thresh).numpy()
    np.testing.assert_array_equal(amg.nms(boxes, scores, thresh), ref)


@pytest.mark.parametrize("hw", [(768, 1024), (100, 37), (256, 256)])
def test_upsampler_matches_torch_interpolate(hw):
    rng = np.random.default_rng(2)
    low = 64
    for _ in range(4):
        logits = rng.standard_normal((low, low)).astype(np.float32)
        logits[:, : rng.integers(0, low)] = -5  # masks that do not fill the frame
        logits[rng.integers(0, low) :, :] = -5
        ref = F.interpolate(torch.from_numpy(logits)[None, None], hw, mode="bilinear", align_corners=False)[
            0, 0
        ]
        ref = (ref > 0).numpy()
        ours = rle.Upsampler(low, hw)(logits)
        # float rounding may flip pixels whose interpolated logit is ~0
        assert (ours != ref).mean() < 1e-4
    assert not rle.Upsampler(low, hw)(np.full((low, low), -1.0, np.float32)).any()


def test_rle_round_trip():
    m = np.zeros((37, 53), bool)
    m[5:20, 7:40] = True
    m[30, 50] = True
    rle = amg.encode_rle(m)
    assert rle["size"] == [37, 53] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(amg.decode_rle(rle), m)


def test_to_model_coords_matches_sam2_transform():
    from sam2.utils.transforms import SAM2Transforms

    t = SAM2Transforms(resolution=1024, mask_threshold=0.0)
    pts = np.array([[10.0, 20.0], [639.0, 479.0]], np.float32)
    ref = t.transform_coords(
        torch.from_numpy(pts / np.array([640, 480], np.float32)), normalize=False
    ).numpy()
    ref_norm = t.transform_coords(torch.from_numpy(pts), normalize=True, orig_hw=(480, 640)).numpy()
    np.testing.assert_allclose(amg.to_model_coords(pts, (480, 640), 1024), ref_norm, rtol=1e-6)
    assert ref.shape == ref_norm.shape


def test_upsampler_shrinking_when_no_output_pixel_samples_the_mask():
    # 64 -> 8 rows/columns: low-res cell 1 is never a tap of any output pixel
    logits = np.full((64, 64), -1.0, np.float32)
    logits[1, 1] = 5.0
    assert not rle.Upsampler(64, (8, 8))(logits).any()


def _logit_cases(rng, low: int):
    """Low-res logits of every kind the answer path meets: noise (random weights), smooth fields
    (trained-like masks), all in, all out but one cell, exact zeros on the threshold, a disk."""
    noise = rng.standard_normal((low, low)).astype(np.float32)
    smooth = (np.cumsum(np.cumsum(noise, 0), 1) / low).astype(np.float32)
    yy, xx = np.mgrid[:low, :low]
    disk = (low / 3 - np.hypot(yy - low / 2, xx - low / 3)).astype(np.float32)
    one = np.full((low, low), -1.0, np.float32)
    one[rng.integers(0, low), rng.integers(0, low)] = 2.0
    return [noise, smooth, np.abs(noise) + 0.1, one, np.maximum(noise, 0), disk, -disk]


@pytest.mark.parametrize(
    "hw", [(1024, 1024), (768, 1024), (1000, 750), (97, 131), (300, 255), (5, 1), (2, 513)]
)
def test_encode_equals_upsampling_then_pycocotools(hw):
    """Upsampler.encode (runs found from the cells whose taps disagree) is byte for byte the RLE of
    the upsampled mask, with its area and box, at sizes up and down and for noise-like masks (which
    take the dense route)."""
    rng = np.random.default_rng(3)
    for low in (64, 7):
        up = rle.Upsampler(low, hw)
        for logits in _logit_cases(rng, low):
            mask = up(logits)
            got = up.encode(logits)
            if not mask.any():
                assert got is None
                continue
            assert got.counts == amg.encode_rle(mask)["counts"]
            assert got.area == int(mask.sum())
            assert got.box == tuple(int(v) for v in amg.masks_to_boxes(mask[None])[0])
            full = got.mask if isinstance(got.mask, np.ndarray) else got.mask.full()
            np.testing.assert_array_equal(full, mask)
            if not isinstance(got.mask, np.ndarray):
                for x0, y0, x1, y1 in (
                    (0, 0, 1, 1),
                    (1, 0, hw[1], hw[0] - 1),
                    (hw[1] // 2, hw[0] // 3, hw[1], hw[0]),
                ):
                    if x1 > x0 and y1 > y0:
                        np.testing.assert_array_equal(got.mask.region(x0, y0, x1, y1), mask[y0:y1, x0:x1])


def test_encode_of_a_smooth_mask_computes_only_its_boundary():
    """The cost follows the boundary: a disk's upsampled pixels are never all computed."""
    up = rle.Upsampler(256, (1024, 1024))
    yy, xx = np.mgrid[:256, :256]
    disk = (60 - np.hypot(yy - 128, xx - 100)).astype(np.float32)
    got = up.encode(disk)
    assert got.counts == amg.encode_rle(up(disk))["counts"] and got.area == int(up(disk).sum())
    assert isinstance(got.mask, rle.RunMask)
    # pixels computed one by one: those of the cells on the boundary (4 x 4 each)
    _, computed = up.runs(disk)
    assert 0 < computed < 0.01 * 1024 * 1024, computed


def test_coco_string_matches_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(4)
    for t in range(200):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        m = rng.random((h, w)) < rng.random()
        if t % 4 == 0:
            m = np.zeros((h, w), bool)
            m[rng.integers(0, h) :, rng.integers(0, w) :] = True
        f = m.T.reshape(-1)
        bounds = np.nonzero(f[1:] != f[:-1])[0] + 1
        counts = np.diff(np.concatenate([[0], [0] if f[0] else [], bounds, [f.size]]))
        ref = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
        assert rle.coco_string(counts) == ref
    big = np.array([0, 9_000_000, 5, 123_456_789, 1], np.int64)  # counts of more than 5 chunks
    ref = mask_utils.frPyObjects({"size": [int(big.sum()), 1], "counts": big.tolist()}, int(big.sum()), 1)
    assert rle.coco_string(big) == ref["counts"].decode()


def test_encode_many_equals_encode_one_by_one():
    """A chunk of masks at once (noise-like ones upsampled whole among them) gives each mask's own."""
    rng = np.random.default_rng(5)
    for hw in ((1024, 768), (50, 300)):
        up = rle.Upsampler(64, hw)
        batch = np.stack(_logit_cases(rng, 64) + [np.full((64, 64), -1.0, np.float32)])
        many = up.encode_many(batch)
        for logits, got in zip(batch, many):
            one = up.encode(logits)
            assert (got is None) == (one is None)
            if got is not None:
                assert (got.counts, got.area, got.box) == (one.counts, one.area, one.box)
