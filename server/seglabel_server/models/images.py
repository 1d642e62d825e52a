"""What every model takes in: an image decoded from its bytes, and each model's input prepared from
it (SAM2's square resize, Depth Anything's, CLIP's crop of a mask). The export's parity checks and
the server share these, so an exported graph is checked on exactly what it is fed. numpy + Pillow."""

from __future__ import annotations

import contextlib
import io
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps

from seglabel_server import kernels
from seglabel_server.errors import InvalidImage, LimitExceeded, SeglabelError
from seglabel_server.rle import RunMask

# Decoded by Pillow's own code only: no format that hands the bytes to an external program (EPS and
# PS run Ghostscript) or is a document (PDF). Pillow tries no other plugin (Image.open's formats=).
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")


@contextlib.contextmanager
def _decoding(max_pixels: int):
    """Pillow's failures as the domain's: a bomb is LimitExceeded, anything else InvalidImage (the
    message never echoes library internals)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except SeglabelError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise LimitExceeded(f"image too large to decode safely (over {max_pixels} pixels)") from None
    except Exception as exc:
        raise InvalidImage(f"cannot decode image: truncated or corrupt data ({type(exc).__name__})") from None


def open_image(data: bytes, max_pixels: int = 40_000_000) -> Image.Image:
    """Encoded bytes opened and their header read, the pixels not decoded yet (admission charges the
    request by its size first): only ALLOWED_FORMATS, at most ``max_pixels``."""
    if not data:
        raise InvalidImage("image is empty")
    with _decoding(max_pixels):
        try:
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        except Image.UnidentifiedImageError:
            raise InvalidImage(
                f"cannot decode image: not one of the accepted formats ({', '.join(ALLOWED_FORMATS)})"
            ) from None
        w, h = img.size
        if w * h > max_pixels:
            raise LimitExceeded(f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
    return img


def decode_opened(img: Image.Image, max_pixels: int = 40_000_000) -> np.ndarray:
    """An opened image's pixels: RGB uint8 [H,W,3], EXIF orientation applied."""
    with _decoding(max_pixels):
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # (a copy when there is nothing to turn)
        arr = np.asarray(img if img.mode == "RGB" else img.convert("RGB"))
    if arr.shape[0] < 8 or arr.shape[1] < 8:
        raise InvalidImage(f"image is {arr.shape[1]}x{arr.shape[0]}; at least 8x8 pixels are needed")
    return arr


def decode_image(data: bytes, max_pixels: int = 40_000_000) -> np.ndarray:
    """Encoded bytes -> RGB uint8 [H,W,3], EXIF orientation applied (:func:`open_image`, then
    :func:`decode_opened`)."""
    return decode_opened(open_image(data, max_pixels), max_pixels)


def _square(image: np.ndarray, size: int, mean, std, resample) -> np.ndarray:
    resized = image if image.shape[:2] == (size, size) else np.asarray(
        Image.fromarray(image).resize((size, size), resample)
    )  # fmt: skip
    # (v / 255 - mean) / std per channel, in float32 as written, looked up for the 256 levels
    # (kernels.normalise: one pass, 0.7 ms for 1024 x 1024 here against 4.4 ms for numpy's take)
    levels = np.arange(256, dtype=np.float32)[:, None] * np.float32(1.0 / 255.0)
    table = (levels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)  # [256, 3]
    return kernels.normalise(resized, table, np.empty((3, size, size), np.float32))


def sam_preprocess(image: np.ndarray, size: int, mean, std) -> np.ndarray:
    """RGB uint8 [H,W,3] -> float32 [3,size,size]: square resize (as SAM2Transforms), [0,1], normalise."""
    return _square(image, size, mean, std, Image.BILINEAR)


def video_preprocess(image: np.ndarray, size: int, mean, std) -> np.ndarray:
    """A video frame as sam2's video loader prepares it (``sam2.utils.misc.load_video_frames``:
    Pillow's default, bicubic, square resize, [0,1], normalise)."""
    return _square(image, size, mean, std, Image.BICUBIC)


def depth_preprocess(image: np.ndarray, size: int, mean, std) -> np.ndarray:
    """RGB uint8 [H,W,3] -> float32 [3,size,size] for Depth Anything: square bicubic resize (as
    transformers' conversion check), [0,1], ImageNet normalisation."""
    return _square(image, size, mean, std, Image.BICUBIC)


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


class CropSource:
    """One image prepared for many CLIP crops: a Pillow image of it and its 2 x 2 box reductions,
    made once (each when a crop first needs it). A crop resizes from the smallest reduction that
    is still at least twice its size (what Pillow's ``reducing_gap=2`` does inside one resize, there
    once per crop over the crop's full-resolution region). Safe to share between threads."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.levels = [Image.fromarray(image)]
        self._lock = threading.Lock()

    def _level(self, n: int) -> Image.Image:
        with self._lock:
            while len(self.levels) <= n:
                self.levels.append(self.levels[-1].reduce(2))
            return self.levels[n]

    def resized(self, x0: int, y0: int, x1: int, y1: int, tw: int, th: int) -> Image.Image:
        """The region [x0, x1) x [y0, y1) resized to ``tw`` x ``th`` (bicubic)."""
        f = min((x1 - x0) / tw, (y1 - y0) / th) / 2.0
        n = int(np.floor(np.log2(f))) if f >= 2.0 else 0
        s = float(1 << n)
        box = (x0 / s, y0 / s, x1 / s, y1 / s)
        return self._level(n).resize((tw, th), Image.BICUBIC, box=box, reducing_gap=2.0)


def mask_keep(mask, x0: int, y0: int, x1: int, y1: int, tw: int, th: int) -> np.ndarray:
    """[th, tw] float64 in [0, 1]: the mask's share of each pixel of its region [x0,x1) x [y0,y1)
    resized to ``tw`` x ``th`` (``kernels.keep_share``: area coverage where the region shrinks, the
    mask's linear interpolation where it grows), from the mask's runs. ``mask``: an ``rle.RunMask``
    or a full-image bool array (its runs found first)."""
    runs = mask if isinstance(mask, RunMask) else RunMask.of(np.asarray(mask, bool))
    return kernels.keep_share(runs.bounds, runs.h, x0, y0, x1, y1, th, tw)


def clip_crop(
    image: np.ndarray | CropSource,
    mask,
    box_xywh,
    size: int,
    mean,
    std,
    context: float = 0.15,
    background_keep: float = 0.2,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """One CLIP input for a mask: its box grown by ``context`` on each side, padded to a square with
    CLIP's mean grey, resized to ``size`` (bicubic), pixels outside the mask faded to that grey
    (``background_keep`` of the original stays, so context is not lost), normalised.
    ``image``: RGB uint8, or a :class:`CropSource` of it (many crops of one image). ``mask``: an
    ``rle.RunMask`` or a full-image bool array (:func:`mask_keep`), None for a plain box crop. The
    region is resized first and blended at ``size`` x ``size`` with the mask's share of each pixel
    (``kernels.crop_blend``, one compiled pass): the cost does not grow with the mask's size.
    Written into ``out`` ([3,size,size] float32) when given."""
    source = image if isinstance(image, CropSource) else CropSource(image)
    h, w = source.image.shape[:2]
    x0, y0, x1, y1, th, tw = crop_region(box_xywh, w, h, size, context)
    # reducing_gap 2: a box reduction by an integer factor first when shrinking more than 2x (what
    # PIL's docs call indistinguishable from fair resampling in most cases; ~0.3/255 mean difference
    # on the bundled photo, half the time of the 1024 -> 224 bicubic).
    region = np.asarray(source.resized(x0, y0, x1, y1, tw, th))
    keep = None if mask is None else mask_keep(mask, x0, y0, x1, y1, tw, th)
    grey = np.asarray(mean, np.float32) * np.float32(255.0)
    scale = np.float32(1.0) / (np.float32(255.0) * np.asarray(std, np.float32))  # grey / 255 == mean
    if out is None:
        out = np.empty((3, size, size), np.float32)
    return kernels.crop_blend(region, keep, grey, scale, float(background_keep), out)
