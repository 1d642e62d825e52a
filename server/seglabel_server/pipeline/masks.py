"""Masks: prompts for the decoder, candidate masks filtered on their LOW-RES logits (predicted
IoU, stability, box NMS, max_masks), then only the survivors upsampled, measured and RLE-encoded."""

from __future__ import annotations

import numpy as np

from seglabel_server import amg
from seglabel_server.amg import MaskData
from seglabel_server.models.kinds.sam2 import DecoderOutput
from seglabel_server.types import MaskResult, SegmentParams


def prompts(
    p: SegmentParams, hw: tuple[int, int], size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(coords [N,P,2] model frame, labels [N,P] int32, grid points [N,2] original pixels or None)."""
    h, w = hw
    if p.prompt_type == "grid":
        pts = amg.build_point_grid(p.points_per_side) * np.array([w, h])
        coords = amg.to_model_coords(pts, hw, size)[:, None, :]
        return coords, np.ones((len(pts), 1), np.int32), pts
    pts = np.array([[x, y] for x, y, _ in p.points], np.float32).reshape(-1, 2)
    lab = np.array([lab for _, _, lab in p.points], np.int32)
    if p.prompt_type == "points":
        return amg.to_model_coords(pts, hw, size)[None], lab[None], None
    boxes = np.array(p.boxes, np.float32).reshape(-1, 2, 2)
    coords = np.concatenate([boxes, np.repeat(pts[None], len(boxes), 0)], axis=1)
    labels = np.concatenate(
        [np.tile(np.array([[2, 3]], np.int32), (len(boxes), 1)), np.repeat(lab[None], len(boxes), 0)],
        axis=1,
    )
    return amg.to_model_coords(coords.reshape(-1, 2), hw, size).reshape(coords.shape), labels, None


def select(
    p: SegmentParams, outs: list[DecoderOutput], grid_points: np.ndarray | None, hw, sam: dict
) -> MaskData:
    """Candidates that pass the filters, best first: columns logits [K,L,L], iou, stability, point.

    Grid: predicted IoU, stability (low-res), box NMS on low-res boxes, max_masks. Prompts: the
    single mask (or the 3 candidates with ``multimask``, best predicted IoU first)."""
    low = sam["low_res_size"]
    if p.prompt_type != "grid":
        return _prompted(p, outs, low, sam)
    # One row per (kept prompt, candidate), in decoder order.
    data, offset = MaskData(), 0
    for chunk, o in enumerate(outs):
        m = len(o.kept)
        data.cat(
            MaskData(
                prompt=np.repeat(o.kept.astype(np.int64) + offset, 3),
                chunk=np.full(3 * m, chunk),
                row=np.repeat(np.arange(m), 3),
                candidate=np.tile(np.arange(3), m),
                iou=o.iou[o.kept].reshape(-1),
                stability=o.stability.reshape(-1),
            )
        )
        offset += len(o.iou)
    if not len(data):
        return _empty(low)
    keep = np.ones(len(data), bool)
    if p.pred_iou_thresh > 0:
        keep &= data["iou"] > p.pred_iou_thresh
    if p.stability_score_thresh > 0:
        keep &= data["stability"] >= p.stability_score_thresh
    data.filter(keep)
    # Fetch only the survivors' logits, chunk by chunk (GPU backends copy just these).
    parts = [
        outs[c].masks.take(data["row"][data["chunk"] == c], data["candidate"][data["chunk"] == c])
        for c in np.unique(data["chunk"])
    ]
    data["logits"] = np.concatenate(parts) if parts else np.zeros((0, low, low), np.float32)
    bin_low = data["logits"] > sam["mask_threshold"]
    boxes = amg.masks_to_boxes(bin_low)
    # Low-res inclusive bounds -> original pixels.
    h, w = hw
    sx, sy = w / low, h / low
    boxes = np.stack(
        [boxes[:, 0] * sx, boxes[:, 1] * sy, (boxes[:, 2] + 1) * sx - 1, (boxes[:, 3] + 1) * sy - 1],
        axis=1,
    )
    nonempty = bin_low.any(axis=(1, 2))
    order = amg.nms(boxes, np.where(nonempty, data["iou"], -np.inf), p.box_nms_thresh)
    data.filter(order[nonempty[order]][: p.max_masks])
    data["point"] = [tuple(float(v) for v in grid_points[i]) for i in data["prompt"]]
    return data


def _prompted(p: SegmentParams, outs: list[DecoderOutput], low: int, sam: dict) -> MaskData:
    if p.multimask:
        logits = np.concatenate([o.masks.numpy() for o in outs]).reshape(-1, low, low)
        iou = np.concatenate([o.iou[o.kept] for o in outs]).reshape(-1)
        stab = np.concatenate([o.stability for o in outs]).reshape(-1)
        order = np.argsort(-iou, kind="stable")[: p.max_masks]
    else:
        logits = np.concatenate([o.single_mask.numpy() for o in outs]).reshape(-1, low, low)
        iou = np.concatenate([o.single_iou for o in outs]).reshape(-1)
        stab = amg.stability_score(logits, sam["mask_threshold"], sam["stability_offset"])
        order = np.arange(min(len(iou), p.max_masks))  # one mask per prompt, in request order
    return MaskData(logits=logits, iou=iou, stability=stab, point=[None] * len(iou)).filter(order)


def _empty(low: int) -> MaskData:
    return MaskData(
        logits=np.zeros((0, low, low), np.float32), iou=np.zeros(0), stability=np.zeros(0), point=[]
    )


class MaskFinisher:
    """Survivors -> full-resolution masks, exact boxes, areas and COCO RLE."""

    def __init__(self, sam: dict, upsample_on_backend=None):
        self.sam = sam
        self.upsample_on_backend = upsample_on_backend
        self._upsamplers: dict[tuple, amg.Upsampler] = {}

    def upsampler(self, hw) -> amg.Upsampler:
        key = (self.sam["low_res_size"], hw)
        up = self._upsamplers.get(key)
        if up is None:
            up = self._upsamplers[key] = amg.Upsampler(
                self.sam["low_res_size"], hw, self.sam["mask_threshold"]
            )
            while len(self._upsamplers) > 8:
                self._upsamplers.pop(next(iter(self._upsamplers)))
        return up

    def upsample(self, cand: MaskData, hw) -> np.ndarray | None:
        """All survivors at once on the backend's device when it offers that, else None (CPU per mask)."""
        if len(cand) and self.upsample_on_backend is not None:
            return self.upsample_on_backend(cand["logits"], hw, self.sam["mask_threshold"])
        return None

    def describe(self, cand: MaskData, idx: range, full_masks: np.ndarray | None, hw, ctx=None) -> list:
        """(MaskResult without index, full-res mask) for survivors ``idx``; empty masks dropped.
        Stops (Cancelled / DeadlineExceeded) between masks once ``ctx`` is done."""
        up = self.upsampler(hw) if full_masks is None else None
        out = []
        for i in idx:
            if ctx is not None:
                ctx.check()
            m = up(cand["logits"][i]) if full_masks is None else full_masks[i]
            area = int(m.sum())
            if area == 0:
                continue
            x0, y0, x1, y1 = amg.masks_to_boxes(m[None])[0]
            result = MaskResult(
                index=-1,
                rle=amg.encode_rle(m),
                bbox=(float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)),
                area=area,
                predicted_iou=float(cand["iou"][i]),
                stability_score=float(cand["stability"][i]),
                point=cand["point"][i],
            )
            out.append((result, m))
        return out
