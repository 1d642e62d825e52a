"""The grid's candidate filter, one decoder call at a time, against the same filter over every
call's output at once (sam2's AMG order); and what it keeps in memory while it runs."""

from __future__ import annotations

import numpy as np
import pytest
from seglabel_server import amg
from seglabel_server.models.kinds.sam2 import DecoderOutput, MaskLogits
from seglabel_server.pipeline.masks import CandidateSet, select
from seglabel_server.types import SegmentOptions

LOW = 16
SAM = {"low_res_size": LOW, "mask_threshold": 0.0}
HW = (40, 60)


def outputs(rng, calls: int, per_call: int, ties: bool) -> list[DecoderOutput]:
    outs = []
    for _ in range(calls):
        iou = rng.random((per_call, 3)).astype(np.float32)
        if ties:  # many equal scores: the decoder's order must break them
            iou = np.round(iou * 4) / 4
        kept = np.arange(per_call)[rng.random(per_call) < 0.8]
        masks = np.full((len(kept), 3, LOW, LOW), -1.0, np.float32)
        for r in range(len(kept)):
            for c in range(3):
                if rng.random() < 0.1:
                    continue  # an empty candidate
                y0, x0 = rng.integers(0, LOW - 2, 2)
                y1, x1 = y0 + rng.integers(1, LOW - y0), x0 + rng.integers(1, LOW - x0)
                masks[r, c, y0:y1, x0:x1] = rng.random() + 0.1
        stab = rng.random((len(kept), 3)).astype(np.float32)
        single = masks[:, :1].copy()
        outs.append(DecoderOutput(iou, kept, MaskLogits(masks), stab, MaskLogits(single), iou[kept, :1]))
    return outs


def all_at_once(p: SegmentOptions, outs: list[DecoderOutput], grid: np.ndarray):
    """The filter over every output at once: (logits, iou, stability, points)."""
    logits, iou, stab, prompt, offset = [], [], [], [], 0
    for o in outs:
        logits.append(o.masks.numpy().reshape(-1, LOW, LOW))
        iou.append(o.iou[o.kept].reshape(-1))
        stab.append(o.stability.reshape(-1))
        prompt.append(np.repeat(o.kept + offset, 3))
        offset += len(o.iou)
    logits, iou, stab, prompt = (np.concatenate(c) for c in (logits, iou, stab, prompt))
    keep = np.ones(len(iou), bool)
    if p.pred_iou_thresh > 0:
        keep &= iou > p.pred_iou_thresh
    if p.stability_score_thresh > 0:
        keep &= stab >= p.stability_score_thresh
    binary = logits > 0
    keep &= binary.any(axis=(1, 2))
    logits, iou, stab, prompt, binary = logits[keep], iou[keep], stab[keep], prompt[keep], binary[keep]
    b = amg.masks_to_boxes(binary)
    h, w = HW
    sx, sy = w / LOW, h / LOW
    boxes = np.stack([b[:, 0] * sx, b[:, 1] * sy, (b[:, 2] + 1) * sx - 1, (b[:, 3] + 1) * sy - 1], axis=1)
    order = amg.nms(boxes, iou, p.box_nms_thresh)[: p.max_masks]
    return logits[order], iou[order], stab[order], [tuple(grid[i]) for i in prompt[order]]


@pytest.mark.parametrize("nms", [1.0, 0.5])
@pytest.mark.parametrize("max_masks", [5, 40, 1000])
@pytest.mark.parametrize("thresholds", [(0.0, 0.0), (0.3, 0.2)])
@pytest.mark.parametrize("ties", [False, True])
def test_one_call_at_a_time_equals_all_at_once(nms, max_masks, thresholds, ties):
    rng = np.random.default_rng(max_masks + int(nms * 10) + int(ties))
    outs = outputs(rng, calls=6, per_call=12, ties=ties)
    grid = rng.random((6 * 12, 2)) * [HW[1], HW[0]]
    p = SegmentOptions(
        points_per_side=1,
        pred_iou_thresh=thresholds[0],
        stability_score_thresh=thresholds[1],
        box_nms_thresh=nms,
        max_masks=max_masks,
    )
    got = select(p, outs, grid, HW, SAM)
    logits, iou, stab, points = all_at_once(p, outs, grid)
    assert len(got) == len(iou) > 0
    np.testing.assert_array_equal(got["iou"], iou)
    np.testing.assert_array_equal(got["stability"], stab)
    assert got["point"] == [tuple(float(v) for v in pt) for pt in points]
    np.testing.assert_array_equal(got["logits"][0 : len(got)], logits)
    np.testing.assert_array_equal(got["logits"][2:5], logits[2:5])
    np.testing.assert_array_equal(got["logits"][1], logits[1])


def test_with_nms_off_it_keeps_at_most_max_masks_logits_between_calls():
    """Memory follows max_masks, not the prompts: after every call the set holds at most
    max_masks candidates, and the rows its blocks hold are exactly those."""
    rng = np.random.default_rng(3)
    outs = outputs(rng, calls=10, per_call=12, ties=False)
    grid = rng.random((120, 2))
    p = SegmentOptions(points_per_side=1, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                      box_nms_thresh=1.0, max_masks=7)  # fmt: skip
    cands, offset = CandidateSet(p, grid, HW, SAM), 0
    for o in outs:
        cands.add(o, offset)
        offset += len(o.iou)
        assert len(cands) <= 7
        assert sum(len(b) for b in cands.blocks if b is not None) == len(cands)
    assert len(cands.result()) == 7
