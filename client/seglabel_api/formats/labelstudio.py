"""Label Studio's formats: the project's labeling config (which tags, which labels), its brush
RLE (``label_studio_sdk.converter.brush``'s format: the mask as an RGBA image, bit-packed runs),
regions in percent of the image, and predictions. Pure functions of arrays and dicts."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np

# The tags a prediction can fill, and the result type each writes.
OUTPUT_TAGS = {
    "BrushLabels": "brushlabels",
    "PolygonLabels": "polygonlabels",
    "RectangleLabels": "rectanglelabels",
}
# The tags whose regions, drawn by an annotator in interactive mode, are prompts (SAM's clicks and boxes).
PROMPT_TAGS = {"KeyPointLabels": "keypointlabels", "RectangleLabels": "rectanglelabels"}


class ConfigError(ValueError):
    """A labeling config seglabel cannot predict for; the message says why and what would do."""


@dataclass(frozen=True)
class Control:
    """One labels tag of the config: ``<BrushLabels name=from_name toName=to_name>`` over the
    ``<Image name=to_name value="$key">`` whose task data key is ``key``."""

    tag: str
    type: str  # the result type: "brushlabels", ...
    from_name: str
    to_name: str
    key: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelingConfig:
    outputs: tuple[Control, ...]  # the tags predictions fill, in the config's order
    prompts: tuple[Control, ...]  # KeyPointLabels / RectangleLabels: interactive prompts

    @property
    def output(self) -> Control:
        """The tag pre-annotations fill: the first brush or polygon tag (masks), else rectangles."""
        for kind in ("brushlabels", "polygonlabels", "rectanglelabels"):
            for c in self.outputs:
                if c.type == kind:
                    return c
        raise ConfigError("no BrushLabels, PolygonLabels or RectangleLabels tag")

    def mask_output(self, to_name: str) -> Control | None:
        """The tag an interactive answer over image ``to_name`` fills: brush or polygon (SAM's mask),
        else rectangles (its box)."""
        for kind in ("brushlabels", "polygonlabels", "rectanglelabels"):
            for c in self.outputs:
                if c.type == kind and c.to_name == to_name:
                    return c
        return None

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label of every tag, once, in the config's order: the project's vocabulary."""
        return tuple(dict.fromkeys(lab for c in (*self.outputs, *self.prompts) for lab in c.labels))


def parse_config(xml: str) -> LabelingConfig:
    """The tags of a Label Studio labeling config; ConfigError when it has none seglabel can fill."""
    if not isinstance(xml, str) or not xml.strip():
        raise ConfigError("the labeling config is empty")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ConfigError(f"the labeling config is not valid XML ({exc})") from None
    images = {el.get("name"): el.get("value", "") for el in root.iter() if el.tag == "Image"}
    outputs, prompts = [], []
    for el in root.iter():
        kind = OUTPUT_TAGS.get(el.tag) or PROMPT_TAGS.get(el.tag)
        if kind is None:
            continue
        to_name = el.get("toName", "")
        if to_name not in images:
            raise ConfigError(
                f"<{el.tag} name={el.get('name')!r}> labels {to_name!r}, which is not an <Image>"
            )
        labels = tuple(
            lab.get("value", "").strip() for lab in el.iter("Label") if lab.get("value", "").strip()
        )
        if not labels:
            raise ConfigError(f"<{el.tag} name={el.get('name')!r}> has no <Label value=...>")
        control = Control(el.tag, kind, el.get("name", ""), to_name, images[to_name].lstrip("$"), labels)
        if el.tag in OUTPUT_TAGS:
            outputs.append(control)
        if el.tag in PROMPT_TAGS:
            prompts.append(control)
    if not outputs:
        found = sorted({el.tag for el in root.iter()} - {"View", "Header", "Label", "Image"})
        raise ConfigError(
            "the labeling config has no BrushLabels, PolygonLabels or RectangleLabels tag over an <Image> "
            f"(found: {', '.join(found) or 'nothing'}); seglabel predicts masks, polygons or boxes"
        )
    return LabelingConfig(tuple(outputs), tuple(prompts))


# -- brush RLE ------------------------------------------------------------------------------------
_SIZES = (3, 4, 8, 16)  # run-length field widths, as label_studio_sdk's encoder writes them
_WORD = 8


def brush_encode(mask: np.ndarray) -> list[int]:
    """A [H, W] mask as Label Studio's brush RLE (an RGBA image, 255 on the mask in all four
    channels, flattened): the bytes as a list of ints, what a ``brushlabels`` result's ``rle`` holds.
    Vectorised; writes the same bit stream as ``label_studio_sdk.converter.brush.mask2rle``."""
    flat = np.asarray(mask, bool).ravel()
    n = flat.size * 4
    if flat.size:
        change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
        starts = np.concatenate([[0], change])
        lengths = np.diff(np.concatenate([starts, [flat.size]])) * 4
        values = np.where(flat[starts], 255, 0)
        # runs longer than the widest field are written as several runs of 65536
        chunks = -(-lengths // (1 << 16))
        values, total = np.repeat(values, chunks), np.repeat(lengths, chunks)
        part = np.arange(total.size) - np.repeat(np.cumsum(chunks) - chunks, chunks)  # index within its run
        lengths = np.minimum(1 << 16, total - (1 << 16) * part)
    else:
        values = lengths = np.zeros(0, np.int64)
    size_idx = np.searchsorted(np.array([1 << s for s in _SIZES]), lengths)
    widths_len = np.array(_SIZES)[size_idx]
    # a run: 1 (repeat), 2 bits of size index, (length - 1) in its width, the value in 8 bits (<= 27 bits)
    token = (((1 << 2 | size_idx) << widths_len | (lengths - 1)) << _WORD) | values
    width = 3 + widths_len + _WORD
    header = [n, _WORD - 1, *(s - 1 for s in _SIZES)]  # 32, 5 and 4 x 4 bits
    head = "".join(f"{v:0{k}b}" for v, k in zip(header, (32, 5, 4, 4, 4, 4)))
    # every token's 32 bits, big-endian, keeping its last `width` of them (vectorised: a noisy mask has
    # tens of thousands of runs)
    bits = np.unpackbits(token.astype(">u4").view(np.uint8).reshape(-1, 4), axis=1)
    keep = np.arange(32)[None, :] >= (32 - width)[:, None]
    stream = np.concatenate([np.frombuffer(head.encode(), np.uint8) - ord("0"), bits[keep]])
    # 1-8 zero bits of padding, as the SDK writes (a whole zero byte when the stream fills its bytes)
    stream = np.concatenate([stream, np.zeros(8 - stream.size % 8, np.uint8)])
    return np.packbits(stream).tolist()


def brush_decode(rle: list[int], height: int, width: int) -> np.ndarray:
    """A ``brushlabels`` result's ``rle`` as a [H, W] bool mask (the alpha channel > 0)."""
    bits = (np.unpackbits(np.asarray(rle, np.uint8)) + ord("0")).tobytes().decode("ascii")
    pos = 0

    def read(k: int) -> int:
        nonlocal pos
        if pos + k > len(bits):
            raise ValueError("brush RLE ends early")
        v = int(bits[pos : pos + k], 2)
        pos += k
        return v

    num, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    if num != height * width * 4:
        raise ValueError(f"brush RLE holds {num} values, not {height}x{width}x4")
    out = np.zeros(num, np.uint8)
    i = 0
    while i < num:
        repeat = read(1)
        j = min(num, i + 1 + read(sizes[read(2)]))
        if repeat:
            out[i:j] = read(word)
        else:
            for k in range(i, j):
                out[k] = read(word)
        i = j
    return out.reshape(height, width, 4)[:, :, 3] > 0


# -- regions --------------------------------------------------------------------------------------
def region_id() -> str:
    return uuid.uuid4().hex[:10]


def _base(control: Control, width: int, height: int, rid: str, score: float) -> dict:
    return {
        "id": rid,
        "from_name": control.from_name,
        "to_name": control.to_name,
        "type": control.type,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "score": round(float(score), 6),
    }


def rectangle_value(box_xywh, width: int, height: int) -> dict:
    x, y, w, h = (float(v) for v in box_xywh)
    return {
        "x": 100.0 * x / width,
        "y": 100.0 * y / height,
        "width": 100.0 * w / width,
        "height": 100.0 * h / height,
        "rotation": 0,
    }


def regions(control: Control, mask: np.ndarray, box_xywh, label: str, score: float, rid: str,
            polygons=None) -> list[dict]:  # fmt: skip
    """One object as the results ``control`` takes: one brush region (the mask), one rectangle (its
    box), or a polygon per outer contour (``polygons``: [n, 2] pixel arrays, given by the caller,
    who owns OpenCV). Region ids are ``rid`` (``rid-2``, ... for a mask's further polygons)."""
    h, w = mask.shape
    out = []
    if control.type == "brushlabels":
        r = _base(control, w, h, rid, score)
        r["value"] = {"format": "rle", "rle": brush_encode(mask), "brushlabels": [label]}
        out.append(r)
    elif control.type == "rectanglelabels":
        r = _base(control, w, h, rid, score)
        r["value"] = {**rectangle_value(box_xywh, w, h), "rectanglelabels": [label]}
        out.append(r)
    else:
        for k, poly in enumerate(polygons or []):
            r = _base(control, w, h, rid if k == 0 else f"{rid}-{k + 1}", score)
            pts = np.asarray(poly, np.float64) / np.array([w, h]) * 100.0
            r["value"] = {
                "points": np.clip(pts, 0, 100).round(4).tolist(),
                "closed": True,
                "polygonlabels": [label],
            }
            out.append(r)
    return out


def task_score(confidences: list[float]) -> float:
    """A prediction's task-level score: the mean label confidence of its regions (0 with none).
    Sorted ascending in the Data Manager, the doubtful tasks come first."""
    return round(float(np.mean(confidences)), 6) if confidences else 0.0


def region_label(region: dict) -> str | None:
    """The label an annotation or prediction region carries (its first), None for other results."""
    value = region.get("value") or {}
    got = value.get(region.get("type", ""))
    return got[0] if isinstance(got, list) and got else None


def region_geometry(region: dict) -> tuple[str, object] | None:
    """What a region covers, in pixels of its image: ("mask", [H, W] bool) for brush, ("polygon",
    [n, 2]) for a polygon, ("box", (x0, y0, x1, y1)) for a rectangle; None for other results.
    ValueError when it is malformed."""
    kind = region.get("type")
    value = region.get("value") or {}
    w, h = int(region.get("original_width") or 0), int(region.get("original_height") or 0)
    if kind not in OUTPUT_TAGS.values():
        return None
    if w <= 0 or h <= 0:
        raise ValueError("the region has no original_width / original_height")
    if kind == "brushlabels":
        if value.get("format", "rle") != "rle" or not value.get("rle"):
            raise ValueError("a brush region without its rle")
        return "mask", brush_decode(value["rle"], h, w)
    if kind == "polygonlabels":
        pts = np.asarray(value.get("points") or [], np.float64)
        if pts.ndim != 2 or pts.shape[0] < 3 or pts.shape[1] != 2:
            raise ValueError("a polygon needs 3 or more [x, y] points")
        return "polygon", pts / 100.0 * np.array([w, h])
    x, y = float(value["x"]) * w / 100, float(value["y"]) * h / 100
    x1, y1 = x + float(value["width"]) * w / 100, y + float(value["height"]) * h / 100
    return "box", (max(0.0, x), max(0.0, y), min(float(w), x1), min(float(h), y1))
