"""Masks as COCO runs: low-res logits upsampled to an image's size (bilinear, align_corners=False,
thresholded) as a pixel array (:class:`Upsampler`) or straight into their runs (:meth:`Upsampler.encode`,
whose cost follows a mask's boundary), COCO's compressed string written from run lengths
(:func:`coco_string`), and a mask held as its runs (:class:`RunMask`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from seglabel_server import kernels
from seglabel_server.amg import encode_rle, masks_to_boxes


def _interp_taps(out_size: int, in_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear resize with align_corners=False (torch.nn.functional.interpolate) as two taps per
    output index: out[i] = (1 - f[i]) * in[i0[i]] + f[i] * in[i1[i]]."""
    scale = in_size / out_size
    src = np.clip((np.arange(out_size) + 0.5) * scale - 0.5, 0, None)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, (src - i0).astype(np.float32)


class Upsampler:
    """Bilinear upsampling of low-res logits to one image size, thresholded, computed only over the
    rows/columns that can be inside the mask (bilinear weights are >= 0, so a pixel whose two-by-two
    source neighbourhood is all <= threshold stays out). Two-tap gathers, no BLAS: it runs in the
    pipeline's worker threads side by side without oversubscribing the cores."""

    def __init__(self, low_res: int, orig_hw: tuple[int, int], threshold: float = 0.0):
        self.h, self.w = orig_hw
        self.low = low_res
        self.threshold = threshold
        self.y0, self.y1, fy = _interp_taps(self.h, low_res)
        self.x0, self.x1, fx = _interp_taps(self.w, low_res)
        self.fy = fy[:, None]
        self.fx = fx[None, :]
        self._fy, self._fx = fy, fx
        # Output rows / columns come in groups sharing their two source taps (y0 is non-decreasing):
        # the first output index of each group (and one past the last), and the group's taps.
        _, row_start = np.unique(self.y0, return_index=True)
        _, col_start = np.unique(self.x0, return_index=True)
        self.row_bounds = np.append(row_start, self.h).astype(np.int64)
        self.col_bounds = np.append(col_start, self.w).astype(np.int64)
        self._row_taps = np.stack([self.y0[row_start], self.y1[row_start]], 1).astype(np.int64)
        self._col_taps = np.stack([self.x0[col_start], self.x1[col_start]], 1).astype(np.int64)
        self._thr = np.float32(threshold)  # compared in float32, as numpy compares float32 arrays

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """[L,L] logits -> [H,W] bool mask."""
        out = np.zeros((self.h, self.w), bool)
        pos = logits > self.threshold
        if not pos.any():
            return out
        rows, cols = np.nonzero(pos.any(axis=1))[0], np.nonzero(pos.any(axis=0))[0]
        # Output rows / columns with a positive source tap.
        ys = np.nonzero(
            (self.y0 >= rows[0]) & (self.y0 <= rows[-1]) | (self.y1 >= rows[0]) & (self.y1 <= rows[-1])
        )[0]
        xs = np.nonzero(
            (self.x0 >= cols[0]) & (self.x0 <= cols[-1]) | (self.x1 >= cols[0]) & (self.x1 <= cols[-1])
        )[0]
        if len(ys) == 0 or len(xs) == 0:  # shrinking: no output pixel samples the positive cells
            return out
        a, b = ys[0], ys[-1] + 1
        c, d = xs[0], xs[-1] + 1
        fy = self.fy[a:b]
        t = logits[self.y0[a:b]] * (1 - fy) + logits[self.y1[a:b]] * fy  # [rows, L]
        fx = self.fx[:, c:d]
        block = t[:, self.x0[c:d]] * (1 - fx) + t[:, self.x1[c:d]] * fx
        out[a:b, c:d] = block > self.threshold
        return out

    def encode(self, logits: np.ndarray) -> Encoded | None:
        """[L,L] logits -> the upsampled mask's COCO compressed RLE string, area, inclusive box and
        the mask as its runs (:class:`Encoded`), None where it is empty: byte for byte what encoding
        :meth:`__call__`'s mask gives, at a cost that follows the mask's boundary instead of its
        pixels (``kernels.encode_runs``: an output pixel's value is a convex combination of its 2 x 2
        source taps, so only the cells whose taps disagree are computed pixel by pixel). Measured on
        50 masks of 256 -> 1024 (the smooth benchmark input): see docs/gpu.md, issue 35."""
        changes, _ = self.runs(logits)
        if not len(changes):  # empty, or shrinking: no output pixel samples the positive cells
            return None
        area, x0, y0, x1, y1, text = kernels.describe_runs(changes, self.h, self.h * self.w)
        return Encoded(text.tobytes().decode("ascii"), int(area), (int(x0), int(y0), int(x1), int(y1)),
                       RunMask(changes, self.h, self.w))  # fmt: skip

    def runs(self, logits: np.ndarray) -> tuple[np.ndarray, int]:
        """[L,L] logits -> (where the upsampled mask's COCO runs start, column-major; how many pixels
        were computed one by one)."""
        return kernels.encode_runs(
            np.ascontiguousarray(logits, np.float32), self._thr, self.row_bounds, self._row_taps,
            self._fy, self.col_bounds, self._col_taps, self._fx,
        )  # fmt: skip

    def encode_many(self, logits: np.ndarray) -> list[Encoded | None]:
        """[K,L,L] logits -> :meth:`encode` of each."""
        return [self.encode(one) for one in logits]


@dataclass
class Encoded:
    """A mask as the answer carries it: COCO's compressed string, area, inclusive box (x0, y0, x1,
    y1), and the mask itself (a bool array, or a :class:`RunMask`) for the crops."""

    counts: str
    area: int
    box: tuple[int, int, int, int]
    mask: object


class RunMask:
    """A full-resolution [H,W] mask held as its column-major change positions (where the COCO runs
    start): a region of it is made on demand, never the whole mask."""

    def __init__(self, bounds: np.ndarray, h: int, w: int):
        self.bounds, self.h, self.w = bounds, h, w
        self.shape = (h, w)

    @classmethod
    def of(cls, mask: np.ndarray) -> RunMask:
        """A full [H,W] bool mask's runs."""
        flat = mask.T.reshape(-1)  # column-major
        bounds = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        if flat.size and flat[0]:
            bounds = np.concatenate([[0], bounds])
        return cls(bounds.astype(np.int64), *mask.shape)

    def columns(self, x0: int, y0: int, x1: int, y1: int, on=True) -> np.ndarray:
        """The region column by column: [x1-x0, y1-y0], ``on`` where the mask is (bool, or the
        dtype of ``on``: 255 as uint8 makes an 8-bit image of it), C-contiguous."""
        h, b = self.h, self.bounds
        start, stop = x0 * h, x1 * h
        i, j = np.searchsorted(b, start, side="right"), np.searchsorted(b, stop, side="left")
        lengths = np.diff(np.concatenate([[start], b[i:j], [stop]]))
        inside = (np.arange(len(lengths)) + i) % 2 == 1  # inside after an odd number of changes
        values = np.where(inside, on, np.zeros_like(on))
        cols = np.repeat(values, lengths).reshape(x1 - x0, h)
        return cols if (y0, y1) == (0, h) else np.ascontiguousarray(cols[:, y0:y1])

    def region(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """[y1-y0, x1-x0] bool (a transposed view of :meth:`columns`)."""
        return self.columns(x0, y0, x1, y1).T

    def full(self) -> np.ndarray:
        return np.ascontiguousarray(self.region(0, 0, self.w, self.h))


def encode_mask(mask: np.ndarray) -> Encoded | None:
    """A full-resolution [H,W] bool mask as the answer carries it (pycocotools' RLE, its area and
    box), None when it is empty."""
    area = int(mask.sum())
    if area == 0:
        return None
    x0, y0, x1, y1 = (int(v) for v in masks_to_boxes(mask[None])[0])
    return Encoded(encode_rle(mask)["counts"], area, (x0, y0, x1, y1), mask)


def coco_string(counts: np.ndarray) -> str:
    """COCO's compressed string of run lengths ``counts`` (column-major, zeros first), byte for byte
    pycocotools' ``rleToString`` (``kernels.coco_text``)."""
    return kernels.coco_text(np.asarray(counts, np.int64)).tobytes().decode("ascii")
