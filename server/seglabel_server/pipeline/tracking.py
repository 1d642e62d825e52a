"""The video path's host side (issue 34, first part): choosing among the mask decoder's output
tokens as sam2's ``_forward_sam_heads`` does. A small pure function over arrays, so that one
exported decoder graph (``Sam2TrackDecoder``: every token's mask, IoU and object pointer) serves
first clicks (multimask) and tracked frames (one mask, with sam2's fallback when it is unstable)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_OBJ_SCORE = -1024.0  # sam2's logit for "no object on this frame"


@dataclass(frozen=True)
class HeadsConfig:
    """The model's settings the choice depends on (sam2's config names)."""

    multimask_token_for_ptr: bool = True  # use_multimask_token_for_obj_ptr
    dynamic_fallback: bool = True  # dynamic_multimask_via_stability (the video predictor's)
    stability_delta: float = 0.05
    stability_thresh: float = 0.98
    pred_obj_scores: bool = True


def stability(logits: np.ndarray, delta: float) -> np.ndarray:
    """sam2's ``_get_stability_scores`` over the last two axes (1 where the mask is empty)."""
    flat = logits.reshape(*logits.shape[:-2], -1)
    inner = (flat > delta).sum(-1).astype(np.float32)
    outer = (flat > -delta).sum(-1).astype(np.float32)
    return np.where(outer > 0, inner / np.maximum(outer, 1), 1.0).astype(np.float32)


def select_heads(masks: np.ndarray, ious: np.ndarray, ptrs: np.ndarray, score: np.ndarray, multimask: bool,
                 cfg: HeadsConfig = HeadsConfig()) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """(low-resolution mask logits [B, 1, h, w], IoU [B], object pointer [B, C]) of each row, from
    every token's ``masks`` [B, 4, h, w], ``ious`` [B, 4], ``ptrs`` [B, 4, C] and ``score`` [B, 1]:
    multimask -> the best of tokens 1-3 by IoU (its pointer too, where the model says so); else token
    0, or with the dynamic fallback the best of 1-3 where token 0's mask is unstable (its pointer
    stays token 0's, as in sam2). Rows whose object score says absent get the no-object logit."""
    rows = np.arange(masks.shape[0])
    best = 1 + np.argmax(ious[:, 1:], axis=1)
    if multimask:
        pick, ptr_pick = best, (best if cfg.multimask_token_for_ptr else np.zeros_like(best))
    elif cfg.dynamic_fallback:
        stable = stability(masks[:, 0], cfg.stability_delta) >= cfg.stability_thresh
        pick, ptr_pick = np.where(stable, 0, best), np.zeros_like(best)
    else:
        pick = ptr_pick = np.zeros_like(best)
    low = masks[rows, pick][:, None]
    if cfg.pred_obj_scores:
        low = np.where(score.reshape(-1, 1, 1, 1) > 0, low, np.float32(NO_OBJ_SCORE))
    return low.astype(np.float32), ious[rows, pick], ptrs[rows, ptr_pick]
