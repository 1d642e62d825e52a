"""CVAT's formats: "CVAT for images 1.1" XML (what CVAT imports and exports), its mask RLE (run
lengths over the mask's box, row by row, starting with a background run), and the shapes of its
SDK (``cvat_sdk`` builds them; this module only computes the numbers). Pure functions."""

from __future__ import annotations

import numpy as np


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of a mask's pixels, inclusive; None when it is empty."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())


def mask_runs(mask: np.ndarray, box: tuple[int, int, int, int]) -> list[int]:
    """The run lengths of ``mask`` inside ``box`` (inclusive), row-major, the first run background
    (0 when the box starts on the mask): the ``rle`` of a CVAT XML ``<mask>``, and (with the box
    appended) cvat-sdk's ``encode_mask``."""
    left, top, right, bottom = box
    flat = np.asarray(mask[top : bottom + 1, left : right + 1], bool).ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return runs if not flat[0] else [0, *runs]
