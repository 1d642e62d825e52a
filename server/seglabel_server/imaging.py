"""Image decoding, model input preparation, CLIP crops and the overlay. numpy + Pillow only."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from seglabel_server.errors import InvalidImage, LimitExceeded, SeglabelError

# Decoded by Pillow's own code only: no format that hands the bytes to an external program (EPS and
# PS run Ghostscript) or is a document (PDF). Pillow tries no other plugin (Image.open's formats=).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")


def decode_image(data: bytes, max_pixels: int = 40_000_000, check=None) -> np.ndarray:
    """Encoded bytes -> RGB uint8 [H,W,3], EXIF orientation applied. Only ALLOWED_FORMATS are
    opened; ``check(width, height)``, when given, runs after the header is read and before the
    pixels are decoded (admission by size). Error messages never echo library internals."""
    if not data:
        raise InvalidImage("image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
            except Image.UnidentifiedImageError:
                raise InvalidImage(
                    f"cannot decode image: not one of the accepted formats ({', '.join(ALLOWED_FORMATS)})"
                ) from None
            w, h = img.size
            if w * h > max_pixels:
                raise LimitExceeded(f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
            if check is not None:
                check(w, h)
            img = ImageOps.exif_transpose(img)
            arr = np.asarray(img.convert("RGB"))
    except SeglabelError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise LimitExceeded(f"image too large to decode safely (over {max_pixels} pixels)") from None
    except Exception as exc:
        raise InvalidImage(f"cannot decode image: truncated or corrupt data ({type(exc).__name__})") from None
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise InvalidImage(f"image is {arr.shape[1]}x{arr.shape[0]}; at least 8x8 pixels are needed")
    return arr


def sam_preprocess(image: np.ndarray, size: int, mean, std) -> np.ndarray:
    """RGB uint8 [H,W,3] -> float32 [3,size,size]: square resize (as SAM2Transforms), [0,1], normalise."""
    resized = Image.fromarray(image).resize((size, size), Image.BILINEAR)
    x = np.asarray(resized, dtype=np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def depth_preprocess(image: np.ndarray, size: int, mean, std) -> np.ndarray:
    """RGB uint8 [H,W,3] -> float32 [3,size,size] for Depth Anything: square bicubic resize (as
    transformers' conversion check), [0,1], ImageNet normalisation."""
    resized = Image.fromarray(image).resize((size, size), Image.BICUBIC)
    x = np.asarray(resized, dtype=np.float32) * (1.0 / 255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


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


def crop_region(box_xywh, w: int, h: int, size: int, context: float) -> tuple[int, int, int, int, int, int]:
    """A CLIP crop's region of a ``w`` x ``h`` image: the box grown by ``context`` of its longer side
    on each side, clipped to the image (x0, y0, x1, y1, end exclusive), and its size once resized so
    that the longer side is ``size`` (th, tw); it is centred on the square canvas."""
    x, y, bw, bh = (float(v) for v in box_xywh)
    m = context * max(bw, bh)
    x0, y0 = int(max(0, np.floor(x - m))), int(max(0, np.floor(y - m)))
    x1, y1 = int(min(w, np.ceil(x + bw + m))), int(min(h, np.ceil(y + bh + m)))
    x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
    ch, cw = y1 - y0, x1 - x0
    scale = size / max(ch, cw)
    return x0, y0, x1, y1, max(1, round(ch * scale)), max(1, round(cw * scale))


def clip_crop(
    image: np.ndarray,
    mask: np.ndarray | None,
    box_xywh,
    size: int,
    mean,
    std,
    context: float = 0.15,
    background_keep: float = 0.2,
) -> np.ndarray:
    """One CLIP input for a mask: its box grown by ``context`` on each side, padded to a square with
    CLIP's mean grey, resized to ``size`` (bicubic), pixels outside the mask faded to that grey
    (``background_keep`` of the original stays, so context is not lost), normalised.
    ``mask`` is a full-image bool array (or None for a plain box crop). The region and its mask are
    resized first and blended at ``size`` x ``size``: the cost does not grow with the mask's size."""
    h, w = image.shape[:2]
    x0, y0, x1, y1, th, tw = crop_region(box_xywh, w, h, size, context)
    # reducing_gap 2: a box reduction by an integer factor first when shrinking more than 2x (what
    # PIL's docs call indistinguishable from fair resampling in most cases; ~0.3/255 mean difference
    # on the bundled photo, half the time of the 1024 -> 224 bicubic).
    region = Image.fromarray(image[y0:y1, x0:x1]).resize((tw, th), Image.BICUBIC, reducing_gap=2.0)
    region = np.asarray(region, np.float32)
    grey = np.asarray(mean, np.float32) * 255.0
    if mask is not None:
        keep = Image.fromarray(mask[y0:y1, x0:x1].view(np.uint8) * np.uint8(255))
        keep = keep.resize((tw, th), Image.BILINEAR, reducing_gap=2.0)
        keep = np.asarray(keep, np.float32)[..., None] * (1.0 / 255.0)
        region = grey + (keep + background_keep * (1.0 - keep)) * (region - grey)
    canvas = np.empty((size, size, 3), np.float32)
    canvas[:] = grey
    oy, ox = (size - th) // 2, (size - tw) // 2  # centred
    canvas[oy : oy + th, ox : ox + tw] = region
    x = canvas * (1.0 / 255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


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
