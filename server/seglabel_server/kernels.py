"""The answer path's per-mask loops, compiled (numba, ``nogil``: the CPU pool's threads run them side
by side). Two kernels, each one pass over what a mask costs instead of many numpy calls a mask:

- :func:`encode_runs`: low-res logits -> the upsampled mask's COCO runs (bilinear, align_corners
  False, thresholded), its area, box and compressed string, computing only the pixels of cells whose
  four taps disagree (``rle.Upsampler.encode`` gives the contract);
- :func:`crop_blend`: a CLIP crop's faded, normalised pixels from the resized photo region and the
  mask's runs: the mask's share of each output pixel's footprint, made from the runs without a pixel
  array of the mask (``models.images.clip_crop`` gives the contract).

Compiled in each process on first use (about 4 s for them all here; the server's warm-up pays it),
never cached on disk: processes that compile the same kernel at once (Ray replicas, dataset actors)
race on numba's cache files, and one that loads a half-written file can fail or crash (numba issues
#10128, #10434). With the disk cache on, a Ray replica of this project's tests once died with no
Python traceback; that cause was not proved."""

from __future__ import annotations

import numpy as np
from numba import njit

_ONE = np.float32(1.0)


@njit(nogil=True)
def _grow(buf: np.ndarray, need: int) -> np.ndarray:
    out = np.empty(max(need, 2 * len(buf)), buf.dtype)
    out[: len(buf)] = buf
    return out


@njit(nogil=True)
def encode_runs(logits, thr, row_bounds, row_taps, fy, col_bounds, col_taps, fx):
    """[L,L] float32 ``logits`` -> (changes, counted pixels): the column-major positions in the
    upsampled [H,W] mask (H = row_bounds[-1]) where a COCO run starts, ascending, and how many output
    pixels were computed one by one.

    Output rows come in groups that share their two source taps (group k: rows
    row_bounds[k]..row_bounds[k+1]-1, taps row_taps[k, 0], row_taps[k, 1]; row y's weight fy[y]); the
    same for columns. A pixel is t0 * (1 - fx) + t1 * fx > thr with t = l[r0] * (1 - fy) + l[r1] * fy,
    in float32, in that order (numpy's and ``rle.Upsampler.__call__``'s arithmetic, so the same bits). A
    cell whose four taps are all above ``thr`` is in (a convex combination), all at or below it out:
    only the other cells' pixels are computed, and between two cells of one state nothing changes."""
    h = row_bounds[-1]
    n_rows, n_cols = len(row_bounds) - 1, len(col_bounds) - 1
    state = np.empty(n_rows, np.int8)  # 1 in, 0 out, 2 mixed, per row group of a column group
    look = np.empty(n_rows, np.int64)  # the row groups where a change can be: mixed, or a new state
    changes = np.empty(4096, np.int64)
    n = 0
    computed = 0
    prev = False  # the previous pixel in column-major order (runs continue across columns)
    pos = logits.T > thr  # [column, row]: a column's taps side by side
    for j in range(n_cols):
        c, d = col_taps[j, 0], col_taps[j, 1]
        m = 0
        last = -1
        pc, pd = pos[c], pos[d]
        for k in range(n_rows):
            r0, r1 = row_taps[k, 0], row_taps[k, 1]
            a, b, e, f = pc[r0], pc[r1], pd[r0], pd[r1]
            s = 1 if (a and b and e and f) else (0 if not (a or b or e or f) else 2)
            if k == 0 or s == 2 or s != last:
                look[m] = k
                state[m] = s
                m += 1
            last = s
        for x in range(col_bounds[j], col_bounds[j + 1]):
            if n + h + 1 > len(changes):  # room for a column's changes, at most one per pixel
                changes = _grow(changes, n + h + 1)
            wx = fx[x]
            ux = _ONE - wx
            base = x * h
            for q in range(m):
                k = look[q]
                s = state[q]
                if s != 2:
                    v = s == 1
                    if v != prev:
                        changes[n] = base + row_bounds[k]
                        n += 1
                        prev = v
                    continue
                r0, r1 = row_taps[k, 0], row_taps[k, 1]
                l00, l10, l01, l11 = logits[r0, c], logits[r1, c], logits[r0, d], logits[r1, d]
                for y in range(row_bounds[k], row_bounds[k + 1]):
                    wy = fy[y]
                    uy = _ONE - wy
                    t0 = l00 * uy + l10 * wy
                    t1 = l01 * uy + l11 * wy
                    v = t0 * ux + t1 * wx > thr
                    computed += 1
                    if v != prev:
                        changes[n] = base + y
                        n += 1
                        prev = v
    return changes[:n].copy(), computed


@njit(nogil=True)
def describe_runs(changes, h, hw):
    """Run starts (``changes``, ascending, over an [H,W] column-major mask of ``hw`` pixels) -> (area,
    x0, y0, x1, y1 (the inclusive box), :func:`coco_text` of its run lengths)."""
    n = len(changes)
    area = 0
    x0, y0, x1, y1 = 1 << 62, 1 << 62, -1, -1
    for i in range(0, n, 2):
        on = changes[i]
        off = (changes[i + 1] if i + 1 < n else hw) - 1
        area += off - on + 1
        xs, xe = on // h, off // h
        x0, x1 = min(x0, xs), max(x1, xe)
        if xs == xe:
            y0, y1 = min(y0, on % h), max(y1, off % h)
        else:
            y0, y1 = 0, h - 1
    counts = np.empty(n + 1, np.int64)
    prev = 0
    for i in range(n):
        counts[i] = changes[i] - prev
        prev = changes[i]
    counts[n] = hw - prev
    return area, x0, y0, x1, y1, coco_text(counts)


@njit(nogil=True)
def coco_text(counts):
    """COCO's compressed string of run lengths ``counts`` (column-major, zeros first) as ASCII bytes:
    byte for byte pycocotools' ``rleToString`` (each count from the third on stored as its difference
    to the one two before, in 5-bit chunks, least significant first, 0x20 marking "more", plus 48)."""
    text = np.empty(8 * len(counts), np.uint8)  # 8 chunks hold any count below 2**39
    p = 0
    for i in range(len(counts)):
        v = counts[i]
        if i > 2:
            v -= counts[i - 2]
        more = True
        while more:
            c = v & 0x1F
            v >>= 5
            more = (v != -1) if (c & 0x10) else (v != 0)
            if more:
                c |= 0x20
            text[p] = c + 48
            p += 1
    return text[:p].copy()


@njit(nogil=True)
def _footprints(n: int, scale: float, length: int):
    """Each of ``n`` output pixels' footprint [lo, hi) on a source axis of ``length`` pixels resized by
    ``scale`` source pixels per output pixel: the output pixel's own span where shrinking, one source
    pixel centred on it where growing (the piecewise-constant mask's linear interpolation there),
    clipped to the axis."""
    half = max(scale, 1.0) / 2.0
    lo, hi = np.empty(n), np.empty(n)
    for i in range(n):
        centre = (i + 0.5) * scale
        lo[i] = max(0.0, centre - half)
        hi[i] = min(float(length), centre + half)
    return lo, hi


@njit(nogil=True)
def keep_share(bounds, h, x0, y0, x1, y1, th, tw):
    """[th,tw] float64 in [0, 1]: a mask's share of each output pixel's footprint when its region
    [x0,x1) x [y0,y1) is resized to ``tw`` x ``th`` (:func:`_footprints`: the pixel's span where the
    region shrinks, a source pixel's width where it grows), from the mask's runs (``bounds``: where
    runs start in the [H,W] mask, column-major; ``h`` = H). Per source column, each of its runs'
    overlaps with the rows' footprints, weighted by the column's overlap with the output columns':
    nothing the size of the mask or its region is made, a column without a change costs a few
    operations, a run inside one row's footprint (most of a ragged mask's) one add. (One function:
    a call per run, with its array arguments' reference counts, cost 6x the work.)"""
    ch, cw = y1 - y0, x1 - x0
    sy, sx = ch / th, cw / tw
    shrinking = sy >= 1.0  # footprints then tile the axis: a position's row is arithmetic
    inv = 1.0 / sy
    lo, hi = _footprints(th, sy, ch)
    clo, chi = _footprints(tw, sx, cw)
    # per output column: [0] partial rows' overlaps, [1] differences of whole-footprint weights
    acc = np.zeros((tw, 2, th + 1))
    js, ws = np.empty(tw, np.int64), np.empty(tw)
    j0 = 0
    for x in range(cw):
        while j0 < tw and chi[j0] <= x:  # the first output column whose footprint meets [x, x + 1)
            j0 += 1
        if j0 >= tw:
            break
        nj = 0
        j = j0
        while j < tw and clo[j] < x + 1:
            wgt = min(x + 1.0, chi[j]) - max(float(x), clo[j])
            if wgt > 0:
                js[nj], ws[nj] = j, wgt
                nj += 1
            j += 1
        start, stop = (x0 + x) * h + y0, (x0 + x) * h + y1
        k = np.searchsorted(bounds, start, side="right")
        inside = k % 2 == 1  # inside after an odd number of run starts
        at = start
        while True:
            nxt = bounds[k] if k < len(bounds) and bounds[k] < stop else stop
            if inside and nxt > at:
                a, b = float(at - start), float(nxt - start)  # the run [a, b) in region rows
                if shrinking:
                    first = min(int(a * inv), th - 1)
                    while first > 0 and lo[first] > a:
                        first -= 1
                    while first + 1 < th and hi[first] <= a:
                        first += 1
                    last = max(first, min(int(b * inv), th - 1))
                    while last > first and lo[last] >= b:
                        last -= 1
                    while last + 1 < th and lo[last + 1] < b:
                        last += 1
                else:  # growing: footprints overlap
                    first = np.searchsorted(hi, a, side="right")
                    last = np.searchsorted(lo, b, side="left") - 1
                # rows first..last meet the run; those inside it take their whole footprint
                r = first
                while r <= last and (lo[r] < a or hi[r] > b):  # partial at the start
                    for q in range(nj):
                        acc[js[q], 0, r] += ws[q] * (min(b, hi[r]) - max(a, lo[r]))
                    r += 1
                end = last
                while end >= r and hi[end] > b:  # partial at the end
                    for q in range(nj):
                        acc[js[q], 0, end] += ws[q] * (b - max(a, lo[end]))
                    end -= 1
                if r <= end:
                    for q in range(nj):
                        acc[js[q], 1, r] += ws[q]
                        acc[js[q], 1, end + 1] -= ws[q]
            if nxt >= stop:
                break
            at = nxt
            inside = not inside
            k += 1
    keep = np.empty((th, tw))
    for j in range(tw):
        whole = 0.0
        wx = chi[j] - clo[j]
        for i in range(th):
            whole += acc[j, 1, i]
            length = hi[i] - lo[i]
            keep[i, j] = min(1.0, (acc[j, 0, i] + whole * length) / (length * wx))
    return keep


@njit(nogil=True)
def crop_blend(region, keep, grey, scale, background_keep, out):
    """A CLIP crop written into ``out`` [3,S,S] float32: ``region`` [th,tw,3] uint8 (the photo's
    region resized) centred on CLIP's mean grey (0 once normalised), each pixel
    ((v - grey) * w) * scale per channel, with w = background_keep + (1 - background_keep) * keep
    (``keep`` [th,tw] in [0, 1], :func:`keep_share`; None: a box crop, w = 1)."""
    th, tw = region.shape[0], region.shape[1]
    size = out.shape[1]
    out[:] = 0.0
    oy, ox = (size - th) // 2, (size - tw) // 2
    fade = 1.0 - background_keep
    for c in range(3):
        g, k = grey[c], scale[c]
        for i in range(th):
            for j in range(tw):
                w = 1.0 if keep is None else background_keep + fade * keep[i, j]
                out[c, oy + i, ox + j] = (region[i, j, c] - g) * w * k
    return out


@njit(nogil=True)
def normalise(image, table, out):
    """``out`` [3,H,W] float32 = ``table`` [256,3][image[y, x, c], c] for an [H,W,3] uint8 image: a
    model's per-channel normalisation of 8-bit levels as one lookup pass, channels first."""
    h, w = image.shape[0], image.shape[1]
    for y in range(h):
        for x in range(w):
            for c in range(3):
                out[c, y, x] = table[image[y, x, c], c]
    return out
