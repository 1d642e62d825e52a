"""The numpy post-processing functions against sam2's / torchvision's own implementations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sam2.utils import amg as sam_amg
from seglabel_server import amg
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
        ours = amg.Upsampler(low, hw)(logits)
        # float rounding may flip pixels whose interpolated logit is ~0
        assert (ours != ref).mean() < 1e-4
    assert not amg.Upsampler(low, hw)(np.full((low, low), -1.0, np.float32)).any()


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
    assert not amg.Upsampler(64, (8, 8))(logits).any()
