"""Masks as COCO runs: low-res logits upsampled to an image's size (bilinear, align_corners=False,
thresholded) as a pixel array (:class:`Upsampler`) or straight into their runs (:meth:`Upsampler.encode`,
whose cost follows a mask's boundary), COCO's compressed string written from run lengths
(:func:`coco_string`), and a mask held as its runs (:class:`RunMask`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
        # the groups present, and the first output index of each (and one past the last).
        self.row_groups, row_start = np.unique(self.y0, return_index=True)
        self.col_groups, col_start = np.unique(self.x0, return_index=True)
        self.row_bounds = np.append(row_start, self.h)
        self.col_bounds = np.append(col_start, self.w)
        self.complete = len(self.row_groups) == low_res and len(self.col_groups) == low_res

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

    def values(self, logits: np.ndarray, m, y, x) -> np.ndarray:
        """[K,L,L] logits' upsampled masks at output pixels (``y``, ``x``) of masks ``m`` (index
        arrays broadcast together): the same float32 operations in the same order as
        :meth:`__call__`, so the same bits."""
        fy, fx = self._fy[y], self._fx[x]
        a, b, c, d = self.y0[y], self.y1[y], self.x0[x], self.x1[x]
        t0 = logits[m, a, c] * (1 - fy) + logits[m, b, c] * fy
        t1 = logits[m, a, d] * (1 - fy) + logits[m, b, d] * fy
        return t0 * (1 - fx) + t1 * fx > self.threshold

    # Above this share of cells to compute, :meth:`encode_many` upsamples the mask whole instead
    # (measured on 256 -> 1024 noise logits, every cell to compute: slower by cells than whole).
    DENSE_SHARE = 0.3

    def _cells(self, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(inside, outside) [K, row groups, column groups] of [K,L,L] positives: every output pixel
        of the cell has all four taps above the threshold / none."""
        both_in, both_out = np.empty_like(pos), np.empty_like(pos)
        out = ~pos
        both_in[..., :-1], both_in[..., -1] = pos[..., :-1] & pos[..., 1:], pos[..., -1]  # column taps
        both_out[..., :-1], both_out[..., -1] = out[..., :-1] & out[..., 1:], out[..., -1]
        inside, outside = np.empty_like(pos), np.empty_like(pos)
        inside[:, :-1], inside[:, -1] = both_in[:, :-1] & both_in[:, 1:], both_in[:, -1]  # row taps
        outside[:, :-1], outside[:, -1] = both_out[:, :-1] & both_out[:, 1:], both_out[:, -1]
        if not self.complete:  # shrinking: groups that no output row / column samples are left out
            rows, cols = self.row_groups[:, None], self.col_groups[None, :]
            return inside[:, rows, cols], outside[:, rows, cols]
        return inside, outside

    def _cell_values(self, logits, m, r, c, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Output pixels [n, rows, cols] of n cells whose pixels share their taps (of mask ``m``: row
        taps ``r``, r + 1, column taps ``c``, c + 1; [n] each) at rows ``y`` [n, rows] and columns
        ``x`` [n, cols]: :meth:`values`' arithmetic, each cell's four taps gathered once."""
        last = self.low - 1
        r1, c1 = np.minimum(r + 1, last), np.minimum(c + 1, last)
        fy, fx = self._fy[y][:, :, None], self._fx[x][:, None, :]
        t0 = logits[m, r, c][:, None, None] * (1 - fy) + logits[m, r1, c][:, None, None] * fy
        t1 = logits[m, r, c1][:, None, None] * (1 - fy) + logits[m, r1, c1][:, None, None] * fy
        return t0 * (1 - fx) + t1 * fx > self.threshold

    def _columns(self, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Output columns of column groups ``j``: [n, cols] (padded to the widest, repeating the last
        column) and their validity."""
        cb, nc = self.col_bounds, np.diff(self.col_bounds)
        cols = np.arange(nc[j].max())
        return np.minimum(cb[j][:, None] + cols, self.w - 1), cols < nc[j][:, None]

    def _inner_changes(self, logits: np.ndarray, m, k, j) -> list[np.ndarray]:
        """Changes between consecutive rows inside mixed cells (mask ``m``, cell ``k``, ``j``), by
        cell height: positions in the masks' column-major pixels laid end to end."""
        nr = np.diff(self.row_bounds)[k]
        out = []
        for rows in np.unique(nr[nr > 1]):
            sel = nr == rows
            ms, ks, js = m[sel], k[sel], j[sel]
            y = self.row_bounds[ks][:, None] + np.arange(rows)
            x, ok = self._columns(js)
            v = self._cell_values(logits, ms, self.row_groups[ks], self.col_groups[js], y, x)
            n, i, c = np.nonzero((v[:, 1:] != v[:, :-1]) & ok[:, None, :])
            out.append(ms[n] * (self.h * self.w) + x[n, c] * self.h + y[n, i + 1])
        return out

    def _first_row_changes(self, logits: np.ndarray, m, k, j) -> np.ndarray:
        """Changes between cells (``k`` >= 1, ``j``)'s first row and the row above it (the last of
        the cell above, with that cell's taps)."""
        if not len(k):
            return np.zeros(0, np.int64)
        y = self.row_bounds[k][:, None]
        x, ok = self._columns(j)
        c = self.col_groups[j]
        here = self._cell_values(logits, m, self.row_groups[k], c, y, x)[:, 0]
        above = self._cell_values(logits, m, self.row_groups[k - 1], c, y - 1, x)[:, 0]
        n, i = np.nonzero((here != above) & ok)
        return m[n] * (self.h * self.w) + x[n, i] * self.h + y[n, 0]

    def _column_starts(self, logits: np.ndarray) -> np.ndarray:
        """Changes at each column's first pixel against the previous column's last (COCO runs
        continue across columns; the first column's against "out"), for [K,L,L] logits."""
        k, h, w = len(logits), self.h, self.w
        m, cols = np.arange(k)[:, None], np.arange(w)[None, :]
        first, last = self.values(logits, m, 0, cols), self.values(logits, m, h - 1, cols)  # [K, W]
        prev = np.concatenate([np.zeros((k, 1), bool), last[:, :-1]], axis=1)
        mi, x = np.nonzero(first != prev)
        return mi * (h * w) + x * h

    def encode(self, logits: np.ndarray) -> Encoded | None:
        """[L,L] logits -> :meth:`encode_many` of one mask."""
        return self.encode_many(logits[None])[0]

    def encode_many(self, logits: np.ndarray) -> list[Encoded | None]:
        """[K,L,L] logits -> each upsampled mask's COCO compressed RLE string, area, inclusive box
        and the mask (:class:`Encoded`), None where it is empty: byte for byte what encoding
        :meth:`__call__`'s mask gives, at a cost that follows the masks' boundaries instead of their
        pixels (the mask is then a :class:`RunMask`). (Per mask or for a few at once: measured on
        50 masks of 256 -> 1024, 1.9 ms a mask one by one, 2.7 ms a mask all 50 in one call.)

        An output pixel's value is a convex combination of its 2 x 2 source taps, so where all four
        are above the threshold it is in, where none is it is out. Output pixels sharing their taps
        form cells (about 4 x 4 at 256 -> 1024); only cells whose taps disagree (mixed), or whose
        state differs from the cell above, can hold a change along a column, and only those pixels
        (the rows of mixed cells, the first row of the others and the row above it) are computed.
        A column's first pixel is compared with the previous column's last. A noise-like mask (over
        ``DENSE_SHARE`` of its cells to compute) is upsampled whole instead."""
        logits = np.asarray(logits)
        k_all, h, hw = len(logits), self.h, self.h * self.w
        out: list[Encoded | None] = [None] * k_all
        pos = logits > self.threshold
        inside, outside = self._cells(pos)
        mixed = ~(inside | outside)
        look = mixed.copy()  # cells that can hold a change: mixed, or not in the state of the cell above
        look[:, 1:] |= (inside[:, 1:] != inside[:, :-1]) | (outside[:, 1:] != outside[:, :-1])
        busy = np.count_nonzero(look, axis=(1, 2))
        some = pos.any(axis=(1, 2))
        dense = some & (busy > self.DENSE_SHARE * look[0].size)
        for i in np.nonzero(dense)[0]:
            out[i] = encode_mask(self(logits[i]))
        mine = some & ~dense
        if not mine.any():
            return out
        mixed[~mine] = False
        look[~mine] = False
        look[:, 0] = False  # the first rows' changes are the column starts
        changes = np.concatenate(
            [
                *self._inner_changes(logits, *np.nonzero(mixed)),
                self._first_row_changes(logits, *np.nonzero(look)),
                self._column_starts(logits),  # (those of the other masks are never read)
            ]
        )
        changes.sort()
        cuts = np.searchsorted(changes, np.arange(k_all + 1) * hw)
        for i in np.nonzero(mine)[0]:
            bounds = changes[cuts[i] : cuts[i + 1]] - i * hw
            if not len(bounds):  # shrinking: no output pixel samples the positive cells
                continue
            counts = np.diff(np.concatenate([[0], bounds, [hw]]))
            on, off = bounds[0::2], np.append(bounds[1::2], hw)[: len(bounds[0::2])] - 1
            xs, xe = on // h, off // h
            one_column = xs == xe
            box = (int(xs.min()), int(np.where(one_column, on % h, 0).min()), int(xe.max()),
                   int(np.where(one_column, off % h, h - 1).max()))  # fmt: skip
            out[i] = Encoded(coco_string(counts), int(counts[1::2].sum()), box, RunMask(bounds, h, self.w))
        return out


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
    pycocotools' ``rleToString``: each count from the third on stored as its difference to the one
    two before, cut into 5-bit chunks, least significant first, 0x20 marking "more", plus 48."""
    c = np.asarray(counts, np.int64)
    x = c.copy()
    if len(c) > 3:
        x[3:] -= c[1:-2]
    mag = np.where(x >= 0, x, -x - 1)
    n = np.ones(len(x), np.int64)
    for limit in (16, 512, 16384, 524288, 16777216, 536870912, 1 << 34, 1 << 39):
        n += mag >= limit
    k = np.arange(int(n.max()) if len(n) else 0)
    chunks = (x[:, None] >> (5 * k[None, :])) & 0x1F
    chunks |= (k[None, :] < (n[:, None] - 1)) << 5
    return (chunks[k[None, :] < n[:, None]] + 48).astype(np.uint8).tobytes().decode("ascii")
