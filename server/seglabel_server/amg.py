"""Automatic-mask-generation post-processing as small pure numpy functions (after sam2 utils/amg.py).

Everything here works on LOW-RES logits or boxes, so only masks that survive every filter are ever
upsampled to the original image size. :class:`MaskData` holds the candidates while they are
filtered (numpy columns, or the torch backend's device tensors on its device path).
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


class MaskData:
    """Columns of one length (numpy arrays or lists), filtered and concatenated together, as
    segment-anything's ``MaskData``."""

    def __init__(self, **columns):
        self._cols: dict = {}
        for k, v in columns.items():
            self[k] = v

    def __setitem__(self, key: str, value) -> None:
        if self._cols and len(value) != len(self):
            raise ValueError(f"column {key!r} has {len(value)} rows, not {len(self)}")
        self._cols[key] = value

    def __getitem__(self, key: str):
        return self._cols[key]

    def __len__(self) -> int:
        return len(next(iter(self._cols.values()))) if self._cols else 0

    def filter(self, keep: np.ndarray) -> MaskData:
        """Rows ``keep`` (a boolean mask or indices, in that order), in place."""
        idx = np.nonzero(keep)[0] if np.asarray(keep).dtype == bool else np.asarray(keep, np.int64)
        for k, v in self._cols.items():
            self._cols[k] = v[idx] if isinstance(v, np.ndarray) else [v[i] for i in idx]
        return self

    def cat(self, other: MaskData) -> MaskData:
        """Rows of ``other`` appended, in place."""
        if not self._cols:
            self._cols = dict(other._cols)
            return self
        for k, v in self._cols.items():
            o = other[k]
            self._cols[k] = np.concatenate([v, o]) if isinstance(v, np.ndarray) else v + list(o)
        return self


def build_point_grid(n_per_side: int) -> np.ndarray:
    """[n*n, 2] points (x, y) in [0,1], cell centres, as sam2's ``build_point_grid``."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def to_model_coords(points_xy: np.ndarray, orig_hw: tuple[int, int], size: int) -> np.ndarray:
    """Original-pixel coordinates -> the S x S model input frame (the image is resized, not padded)."""
    h, w = orig_hw
    return (points_xy * np.array([size / w, size / h], np.float32)).astype(np.float32)


def stability_score(logits: np.ndarray, threshold: float = 0.0, offset: float = 1.0) -> np.ndarray:
    """IoU of the masks binarised at threshold +- offset, over the last two axes."""
    hi = (logits > threshold + offset).sum(axis=(-1, -2), dtype=np.int64)
    lo = (logits > threshold - offset).sum(axis=(-1, -2), dtype=np.int64)
    return np.where(lo > 0, hi / np.maximum(lo, 1), 0.0).astype(np.float32)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """[N,H,W] bool -> [N,4] (x0, y0, x1, y1) inclusive pixel bounds; an empty mask gives [0,0,0,0]."""
    n = masks.shape[0]
    if n == 0:
        return np.zeros((0, 4), np.float32)
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    boxes = np.zeros((n, 4), np.float32)
    h, w = masks.shape[1:]
    has = rows.any(axis=1)
    boxes[:, 0] = np.where(has, cols.argmax(axis=1), 0)
    boxes[:, 1] = np.where(has, rows.argmax(axis=1), 0)
    boxes[:, 2] = np.where(has, w - 1 - cols[:, ::-1].argmax(axis=1), 0)
    boxes[:, 3] = np.where(has, h - 1 - rows[:, ::-1].argmax(axis=1), 0)
    return boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int | None = None) -> np.ndarray:
    """Greedy NMS (torchvision semantics: drop boxes whose IoU with a kept one is > threshold).
    Returns kept indices, best score first (ties in index order); with ``limit``, stops once that
    many are kept. Memory is linear in the boxes (one row of IoUs at a time)."""
    order = np.argsort(-scores, kind="stable")
    if iou_threshold >= 1.0 or len(order) == 0:
        return order if limit is None else order[:limit]
    b = boxes[order]
    keep = np.ones(len(order), bool)
    kept = 0
    for i in range(len(order)):
        if not keep[i]:
            continue
        kept += 1
        if limit is not None and kept >= limit:
            keep[i + 1 :] = False
            break
        keep[i + 1 :] &= box_iou(b[i : i + 1], b[i + 1 :])[0] <= iou_threshold
    return order[keep]


def encode_rle(mask: np.ndarray) -> dict:
    """[H,W] bool -> COCO compressed RLE {"size": [h, w], "counts": str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)
