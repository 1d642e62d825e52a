"""Masks: prompts for the decoder, candidate masks filtered on their LOW-RES logits (predicted
IoU, stability, box NMS, max_masks), then only the survivors upsampled, measured and RLE-encoded."""

from __future__ import annotations

import numpy as np

from seglabel_server import amg, rle
from seglabel_server.amg import MaskData
from seglabel_server.models.kinds.sam2 import DecoderOutput
from seglabel_server.types import MaskResult, SegmentOptions


def prompts(
    p: SegmentOptions, hw: tuple[int, int], size: int
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


class HostLogits:
    """Low-res logits in host memory (numpy): what :class:`CandidateSet` does with them. The
    device path's twin is the torch backend's ``TorchDeviceOps`` (same four methods)."""

    @staticmethod
    def take(out: DecoderOutput, rows: np.ndarray, cands: np.ndarray) -> np.ndarray:
        return out.masks.take(rows, cands)

    @staticmethod
    def low_res_boxes(logits: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """([K,4] inclusive low-res boxes, [K] non-empty), host arrays."""
        binary = logits > threshold
        return amg.masks_to_boxes(binary), binary.any(axis=(1, 2))

    @staticmethod
    def rows(block: np.ndarray, idx: np.ndarray) -> np.ndarray:
        return block[idx]

    @staticmethod
    def stack(rows: list) -> np.ndarray:
        return np.stack(rows)


HOST = HostLogits()


class LogitRows:
    """The answer's low-res logits, row ``i`` in block ``blocks[where[i, 0]]`` at ``where[i, 1]``:
    slicing gathers one chunk (so the answer never holds a second copy of every row)."""

    def __init__(self, blocks: list, where: np.ndarray, ops, low: int):
        self.blocks, self.where, self.ops, self.low = blocks, where, ops, low

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, i):
        if isinstance(i, slice):
            picked = self.where[i]
            if not len(picked):
                return np.zeros((0, self.low, self.low), np.float32)
            return self.ops.stack([self.blocks[b][r] for b, r in picked])
        b, r = self.where[i]
        return self.blocks[b][r]


class CandidateSet:
    """A grid's candidate masks, gathered one decoder call at a time, equal to filtering all the
    calls' outputs at once (sam2's AMG order: predicted IoU, stability, box NMS on low-res boxes,
    ``max_masks``; ties keep the decoder's order).

    Each call's candidates are filtered and boxed as the call returns, and only logits that can
    still be in the answer are kept: with NMS off, the best ``max_masks`` so far (the rest can
    never come back); with NMS on, every non-empty survivor of the thresholds (NMS decides only at
    the end). So a request holds at most ``max_masks`` (NMS off) or its threshold survivors of
    low-res logits plus one decoder call's outputs, never every prompt's."""

    _META = ("iou", "stability", "key", "boxes", "where")

    def __init__(self, p: SegmentOptions, grid_points: np.ndarray, hw, sam: dict, ops=HOST):
        self.p, self.grid, self.hw, self.ops = p, grid_points, hw, ops
        self.low, self.threshold = sam["low_res_size"], sam["mask_threshold"]
        self.limit = p.max_masks if p.box_nms_thresh >= 1.0 else None
        self.blocks: list = []
        self.meta = {
            "iou": np.zeros(0, np.float32),
            "stability": np.zeros(0, np.float32),
            "key": np.zeros(0, np.int64),  # decoder order: prompt * 3 + candidate
            "boxes": np.zeros((0, 4), np.float32),  # original pixels
            "where": np.zeros((0, 2), np.int64),  # (block, row)
        }

    def __len__(self) -> int:
        return len(self.meta["key"])

    def add(self, out: DecoderOutput, offset: int) -> None:
        """One decoder call's output; ``offset``: the index of its first prompt in the grid."""
        p, m = self.p, len(out.kept)
        if m == 0:
            return
        iou = np.asarray(out.iou[out.kept], np.float32).reshape(-1)
        stab = np.asarray(out.stability, np.float32).reshape(-1)
        keep = np.ones(len(iou), bool)
        min_iou, min_stability = p.pred_iou_thresh, p.stability_score_thresh  # 0: that filter is off
        if min_iou > 0:
            keep &= iou > min_iou
        if min_stability > 0:
            keep &= stab >= min_stability
        idx = np.nonzero(keep)[0]
        key = (out.kept[idx // 3].astype(np.int64) + offset) * 3 + idx % 3
        if self.limit is not None and len(self) >= self.limit:
            # Below the limit-th best kept so far: never in the answer, its logits not even copied.
            worst = self._rank()[self.limit - 1]
            wi, wk = self.meta["iou"][worst], self.meta["key"][worst]
            better = (iou[idx] > wi) | ((iou[idx] == wi) & (key < wk))
            idx, key = idx[better], key[better]
        if not len(idx):
            return
        logits = self.ops.take(out, idx // 3, idx % 3)
        boxes, nonempty = self.ops.low_res_boxes(logits, self.threshold)
        if not nonempty.all():
            pos = np.nonzero(nonempty)[0]
            logits, boxes, idx, key = self.ops.rows(logits, pos), boxes[pos], idx[pos], key[pos]
        if not len(idx):
            return
        h, w = self.hw
        sx, sy = w / self.low, h / self.low
        boxes = np.stack(  # low-res inclusive bounds -> original pixels
            [boxes[:, 0] * sx, boxes[:, 1] * sy, (boxes[:, 2] + 1) * sx - 1, (boxes[:, 3] + 1) * sy - 1],
            axis=1,
        ).astype(np.float32)
        block = len(self.blocks)
        self.blocks.append(logits)
        new = {
            "iou": iou[idx],
            "stability": stab[idx],
            "key": key,
            "boxes": boxes,
            "where": np.stack([np.full(len(idx), block), np.arange(len(idx))], axis=1),
        }
        self.meta = {k: np.concatenate([self.meta[k], new[k]]) for k in self._META}
        if self.limit is not None and len(self) > self.limit:
            self._keep(np.sort(self._rank()[: self.limit]))

    def _rank(self) -> np.ndarray:
        """Rows best first: predicted IoU descending, then decoder order."""
        return np.lexsort((self.meta["key"], -self.meta["iou"]))

    def _keep(self, rows: np.ndarray) -> None:
        """Keep ``rows`` (in that order); blocks that lost rows are compacted, empty ones freed."""
        self.meta = {k: v[rows] for k, v in self.meta.items()}
        where = self.meta["where"]
        kept = np.bincount(where[:, 0], minlength=len(self.blocks))
        for b, block in enumerate(self.blocks):
            if block is None or kept[b] == len(block):
                continue  # untouched: no scan, no copy
            if not kept[b]:
                self.blocks[b] = None
                continue
            mine = np.nonzero(where[:, 0] == b)[0]
            self.blocks[b] = self.ops.rows(block, where[mine, 1])
            where[mine, 1] = np.arange(len(mine))

    def result(self) -> MaskData:
        """The answer's candidates, best first: columns logits (:class:`LogitRows`), iou,
        stability, point (the grid point, original pixels)."""
        if not len(self):
            return _empty(self.low)
        self._keep(np.argsort(self.meta["key"], kind="stable"))  # decoder order, as all at once
        order = amg.nms(self.meta["boxes"], self.meta["iou"], self.p.box_nms_thresh, self.p.max_masks)
        self._keep(order[: self.p.max_masks])
        m = self.meta
        return MaskData(
            logits=LogitRows(self.blocks, m["where"], self.ops, self.low),
            iou=m["iou"],
            stability=m["stability"],
            point=[tuple(float(v) for v in self.grid[k // 3]) for k in m["key"]],
        )


def select(
    p: SegmentOptions, outs: list[DecoderOutput], grid_points: np.ndarray | None, hw, sam: dict, ops=HOST
) -> MaskData:
    """Candidates that pass the filters, best first: columns logits [K,L,L], iou, stability, point.

    Grid: predicted IoU, stability (low-res), box NMS on low-res boxes, max_masks (through a
    :class:`CandidateSet`, one call's output at a time). Prompts: the single mask (or the 3
    candidates with ``multimask``, best predicted IoU first)."""
    if p.prompt_type != "grid":
        return prompted(p, outs, sam)
    cands, offset = CandidateSet(p, grid_points, hw, sam, ops), 0
    for o in outs:
        cands.add(o, offset)
        offset += len(o.iou)
    return cands.result()


def prompted(p: SegmentOptions, outs: list[DecoderOutput], sam: dict) -> MaskData:
    """Point / box prompts: one mask per prompt (sam2's single-mask answer), or its 3 candidates
    best first with ``multimask``; at most ``max_masks``."""
    low = sam["low_res_size"]
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
        self._upsamplers: dict[tuple, rle.Upsampler] = {}

    def upsampler(self, hw) -> rle.Upsampler:
        key = (self.sam["low_res_size"], hw)
        up = self._upsamplers.get(key)
        if up is None:
            up = self._upsamplers[key] = rle.Upsampler(
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
        Without ``full_masks`` (the backend's upsampled masks) the masks' runs come from their
        low-res logits (:meth:`rle.Upsampler.encode`), and a full-res mask
        is an ``rle.RunMask`` where no pixel array was made (a bool array where the mask is ragged
        enough to make one). Stops (Cancelled / DeadlineExceeded) between masks once ``ctx`` is done."""
        up = self.upsampler(hw) if full_masks is None else None
        out = []
        for i in idx:
            if ctx is not None:
                ctx.check()
            found = up.encode(cand["logits"][i]) if full_masks is None else rle.encode_mask(full_masks[i])
            if found is None:
                continue
            x0, y0, x1, y1 = found.box
            result = MaskResult(
                index=-1,
                rle={"size": list(hw), "counts": found.counts},
                bbox=(float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)),
                area=found.area,
                predicted_iou=float(cand["iou"][i]),
                stability_score=float(cand["stability"][i]),
                point=cand["point"][i],
            )
            out.append((result, found.mask))
        return out
