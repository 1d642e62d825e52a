"""What a request's answer draws: the overlay PNG of masks and captions, and the depth map resized,
quantised to 16 bits and coloured. numpy + Pillow."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def resize_map(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """A float32 [h,w] map resized (bilinear) to [height,width]."""
    if values.shape == (height, width):
        return values.astype(np.float32, copy=False)
    img = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F")
    return np.asarray(img.resize((width, height), Image.BILINEAR), dtype=np.float32)


# A perceptually ordered ramp (dark violet -> orange -> pale yellow, like matplotlib's "inferno"),
# 9 anchors interpolated to 256 colours.
_RAMP = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66],
     [245, 125, 21], [250, 193, 39], [245, 251, 161], [252, 255, 164]], np.float32,
)  # fmt: skip
_LUT = np.stack(
    [np.interp(np.linspace(0, len(_RAMP) - 1, 256), np.arange(len(_RAMP)), _RAMP[:, c]) for c in range(3)], 1
).astype(np.uint8)


def quantize16(values: np.ndarray) -> tuple[np.ndarray, float, float, np.ndarray]:
    """(uint16 codes, min, max, the values they stand for): ``min + q * ((max - min) / 65535)`` in
    float32, as a client decodes them (min/max as float32, the proto's type)."""
    lo, hi = np.float32(values.min()), np.float32(values.max())
    step = np.float32((hi - lo) / np.float32(65535))
    if step > 0:
        q = np.clip(np.rint((values - lo) / step), 0, 65535).astype(np.uint16)
    else:
        q = np.zeros(values.shape, np.uint16)
    return q, float(lo), float(hi), lo + q.astype(np.float32) * step


def colorize(values: np.ndarray, lo: float, hi: float) -> bytes:
    """PNG of a map coloured from ``lo`` (dark) to ``hi`` (bright): for depth, near is bright."""
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    idx = np.clip((values - lo) * scale, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(_LUT[idx]).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _palette(n: int) -> np.ndarray:
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    cols = []
    for hue in hues:
        i = int(hue * 6)
        f = hue * 6 - i
        v, s = 0.95, 0.75
        p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
        cols.append([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6])
    return (np.asarray(cols) * 255).astype(np.uint8).reshape(n, 3)


def render_overlay(
    image: np.ndarray,
    masks: list[np.ndarray],
    captions: list[str] | None = None,
    alpha: float = 0.45,
    check=None,
) -> bytes:
    """PNG of the image with each mask filled in its colour, outlined, and captioned at its box.
    ``check()`` runs between masks (it raises to stop a cancelled request's rendering)."""
    out = image.astype(np.float32).copy()
    colours = _palette(max(len(masks), 1))
    # Largest first so small masks stay visible on top.
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    edges = np.zeros(image.shape[:2], bool)
    for i in order:
        if check is not None:
            check()
        m = masks[i]
        out[m] = (1 - alpha) * out[m] + alpha * colours[i]
        inner = m.copy()
        inner[1:, :] &= m[:-1, :]
        inner[:-1, :] &= m[1:, :]
        inner[:, 1:] &= m[:, :-1]
        inner[:, :-1] &= m[:, 1:]
        edge = m & ~inner
        out[edge] = colours[i]
        edges |= edge
    pil = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    if captions:
        draw = ImageDraw.Draw(pil)
        font = ImageFont.load_default()
        for i in order:
            if not captions[i]:
                continue
            ys, xs = np.nonzero(masks[i])
            if len(xs) == 0:
                continue
            tx, ty = int(xs.min()) + 2, int(ys.min()) + 2
            left, top, right, bottom = draw.textbbox((tx, ty), captions[i], font=font)
            draw.rectangle((left - 2, top - 1, right + 2, bottom + 1), fill=tuple(int(c) for c in colours[i]))
            draw.text((tx, ty), captions[i], fill=(0, 0, 0), font=font)
    buf = io.BytesIO()
    pil.save(buf, format="PNG", optimize=False, compress_level=3)
    return buf.getvalue()
