"""CLIP crops cut many at a time: from one reduction of the photo per request (``CropSource``), with
masks held as runs (``rle.RunMask``), written in place by one compiled pass. Against the crop defined
on the arrays: the region resized by Pillow, the mask's share of each output pixel's footprint."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from seglabel_server.models import images
from seglabel_server.rle import RunMask, Upsampler

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _overlaps(n: int, length: int) -> np.ndarray:
    """[n, length]: the overlap of each output pixel's footprint with each source pixel, a resize
    of ``length`` source pixels to ``n``: the output pixel's span where shrinking, one source pixel
    centred on it where growing, clipped to the axis."""
    scale = length / n
    centre = (np.arange(n) + 0.5) * scale
    half = max(scale, 1.0) / 2
    lo, hi = np.maximum(0, centre - half), np.minimum(length, centre + half)
    src = np.arange(length)
    return np.clip(np.minimum(hi[:, None], src + 1) - np.maximum(lo[:, None], src), 0, None)


def _keep(mask, x0, y0, x1, y1, tw, th) -> np.ndarray:
    """The mask's share of each output pixel's footprint, as dense matrices."""
    wy, wx = _overlaps(th, y1 - y0), _overlaps(tw, x1 - x0)
    covered = wy @ mask[y0:y1, x0:x1].astype(np.float64) @ wx.T
    return covered / (wy.sum(1)[:, None] * wx.sum(1)[None, :])


def _reference(image, mask, box, size=224, context=0.15, keep_share=0.2):
    """The crop written out: region cut and resized with reducing_gap 2, faded by the mask's share of
    each pixel, normalised."""
    h, w = image.shape[:2]
    x0, y0, x1, y1, th, tw = images.crop_region(box, w, h, size, context)
    region = np.asarray(
        Image.fromarray(image[y0:y1, x0:x1]).resize((tw, th), Image.BICUBIC, reducing_gap=2.0), np.float64
    )
    grey = np.asarray(MEAN) * 255.0
    keep = _keep(mask, x0, y0, x1, y1, tw, th)[..., None]
    region = grey + (keep + keep_share * (1.0 - keep)) * (region - grey)
    canvas = np.empty((size, size, 3))
    canvas[:] = grey
    oy, ox = (size - th) // 2, (size - tw) // 2
    canvas[oy : oy + th, ox : ox + tw] = region
    return (((canvas / 255.0) - np.asarray(MEAN)) / np.asarray(STD)).transpose(2, 0, 1)


def _smooth_mask(hw):
    rng = np.random.default_rng(0)
    low = (np.cumsum(np.cumsum(rng.standard_normal((64, 64)), 0), 1) / 8).astype(np.float32)
    up = Upsampler(64, hw)
    return up(low), up.encode(low)


def test_crops_from_a_crop_source_and_run_masks(photo):
    image = np.asarray(Image.fromarray(photo).resize((640, 480)))
    mask, encoded = _smooth_mask(image.shape[:2])
    assert isinstance(encoded.mask, RunMask)
    source = images.CropSource(image)
    levels = np.asarray(STD).reshape(3, 1, 1) * 255
    for box in [(0, 0, 640, 480), (100, 50, 300, 200), (500, 400, 30, 20), (10, 10, 2, 3)]:
        ref = _reference(image, mask, box)
        from_array = images.clip_crop(image, mask, box, 224, MEAN, STD)
        from_source = images.clip_crop(source, mask, box, 224, MEAN, STD)
        np.testing.assert_array_equal(from_array, from_source)
        if box[:2] == (0, 0):  # the whole image: the same reduction, the same pixels, rounding aside
            assert np.abs(from_array - ref).max() * levels.max() < 1e-3
        # (a box of a few pixels is upscaled ~60x: bicubic then reads the photo's pixels around the
        # region where cutting it first repeated its edge)
        assert (np.abs(from_array - ref) * levels).mean() < (0.5 if box[2] > 10 else 2.0), box
        # a mask held as runs: the same runs, the same pixels
        runs = images.clip_crop(source, encoded.mask, box, 224, MEAN, STD)
        np.testing.assert_array_equal(runs, from_array)
        out = np.full((3, 224, 224), 7.0, np.float32)
        assert images.clip_crop(source, encoded.mask, box, 224, MEAN, STD, out=out) is out
        np.testing.assert_array_equal(out, runs)
    box = (100, 50, 300, 200)  # no mask: the box's region as it is
    box_only = images.clip_crop(source, None, box, 224, MEAN, STD)
    np.testing.assert_array_equal(
        box_only, images.clip_crop(source, np.ones((480, 640), bool), box, 224, MEAN, STD)
    )
    assert (np.abs(box_only - _reference(image, np.ones((480, 640), bool), box)) * levels).mean() < 0.5


@pytest.mark.parametrize("region", [(0, 0, 640, 480), (37, 11, 590, 403), (300, 200, 333, 221), (5, 7, 6, 9)])
def test_keep_is_the_masks_share_of_each_pixel(region):
    """From the runs, shrinking and growing, against dense overlap matrices; and near what Pillow's
    bilinear resize of the mask's region (the crop's earlier definition) gives."""
    mask, encoded = _smooth_mask((480, 640))
    x0, y0, x1, y1 = region
    scale = 224 / max(x1 - x0, y1 - y0)
    tw, th = max(1, round((x1 - x0) * scale)), max(1, round((y1 - y0) * scale))
    got = images.mask_keep(encoded.mask, x0, y0, x1, y1, tw, th)
    want = _keep(mask, x0, y0, x1, y1, tw, th)
    np.testing.assert_allclose(got, want, atol=1e-9)
    np.testing.assert_array_equal(images.mask_keep(mask, x0, y0, x1, y1, tw, th), got)
    pil = Image.fromarray(mask[y0:y1, x0:x1].view(np.uint8) * np.uint8(255))
    pil = np.asarray(pil.resize((tw, th), Image.BILINEAR, reducing_gap=2.0), np.float64) / 255
    assert np.abs(got - pil).mean() < 0.005, np.abs(got - pil).mean()  # measured 0.0023 at most
    assert 0.0 <= got.min() and got.max() <= 1.0
    assert ((got == 0) | (got == 1)).mean() > 0.5  # most pixels wholly in or out: a smooth mask


def test_decode_turns_by_exif_and_gives_rgb():
    """A photo's EXIF orientation applied (6: turned 90 degrees clockwise for display), and every
    accepted mode made RGB uint8 [H,W,3]."""
    import io

    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[:5, :10] = (255, 0, 0)  # a red block at the top left, as stored
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, exif=exif)
    turned = images.decode_image(buf.getvalue())
    assert turned.shape == (30, 20, 3) and turned.dtype == np.uint8
    assert turned[:10, -5:, 0].mean() > 200 and turned[:10, -5:, 1].mean() < 60  # now at the top right
    for mode in ("L", "RGBA", "P", "I;16"):
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode if mode != "I;16" else "L").convert(mode).save(buf, "PNG")
        out = images.decode_image(buf.getvalue())
        assert out.shape == (20, 30, 3) and out.dtype == np.uint8, mode
