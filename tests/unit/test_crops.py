"""CLIP crops cut many at a time: from one reduction of the photo per request (``CropSource``), with
masks held as runs (``rle.RunMask``), written in place. Against the crop as defined on the arrays."""

from __future__ import annotations

import numpy as np
from PIL import Image
from seglabel_server.models import images
from seglabel_server.rle import RunMask, Upsampler

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def _reference(image, mask, box, size=224, context=0.15, keep_share=0.2):
    """The crop as first written: region cut, resized with reducing_gap 2, faded, normalised."""
    h, w = image.shape[:2]
    x0, y0, x1, y1, th, tw = images.crop_region(box, w, h, size, context)
    region = np.asarray(
        Image.fromarray(image[y0:y1, x0:x1]).resize((tw, th), Image.BICUBIC, reducing_gap=2.0), np.float32
    )
    grey = np.asarray(MEAN, np.float32) * 255.0
    keep = Image.fromarray(mask[y0:y1, x0:x1].view(np.uint8) * np.uint8(255))
    keep = np.asarray(keep.resize((tw, th), Image.BILINEAR, reducing_gap=2.0), np.float32)[..., None] / 255.0
    region = grey + (keep + keep_share * (1.0 - keep)) * (region - grey)
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = grey
    oy, ox = (size - th) // 2, (size - tw) // 2
    canvas[oy : oy + th, ox : ox + tw] = region
    return (((canvas / 255.0) - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)).transpose(
        2, 0, 1
    )


def test_crops_from_a_crop_source_and_run_masks(photo):
    image = np.asarray(Image.fromarray(photo).resize((640, 480)))
    rng = np.random.default_rng(0)
    low = (np.cumsum(np.cumsum(rng.standard_normal((64, 64)), 0), 1) / 8).astype(np.float32)
    up = Upsampler(64, image.shape[:2])
    mask = up(low)
    encoded = up.encode(low)
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
        # a mask held as runs: its region made column by column and resized transposed
        runs = images.clip_crop(source, encoded.mask, box, 224, MEAN, STD)
        assert (np.abs(runs - from_array) * levels).max() <= 1.01, box
        out = np.full((3, 224, 224), 7.0, np.float32)
        assert images.clip_crop(source, encoded.mask, box, 224, MEAN, STD, out=out) is out
        np.testing.assert_array_equal(out, runs)
