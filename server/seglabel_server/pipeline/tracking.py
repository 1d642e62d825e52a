"""The video path's host side as small pure functions and settings (issue 34): choosing among the
mask decoder's output tokens as sam2's ``_forward_sam_heads`` does (so that one exported decoder
graph, every token's mask, IoU and object pointer, serves first clicks and tracked frames), what a
tracked frame attends to (``memory_plan``), sam2's multimask rule, the settings of a tracking
session, and the bfloat16 storage of memory features."""

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


@dataclass(frozen=True)
class MemoryConfig:
    """The model's memory settings (sam2's names), read from the manifest."""

    num_maskmem: int = 7
    max_cond_frames: int = -1  # max_cond_frames_in_attn (-1: all)
    stride: int = 1  # memory_temporal_stride_for_eval
    max_obj_ptrs: int = 16  # max_obj_ptrs_in_encoder
    ptrs_only_past: bool = True  # only_obj_ptrs_in_the_past_for_eval
    signed_ptr_offsets: bool = True  # use_signed_tpos_enc_to_obj_ptrs


def closest_cond_frames(frame: int, cond: list[int], limit: int) -> tuple[list[int], list[int]]:
    """(selected, unselected) conditioning frames, as sam2's ``select_closest_cond_frames``: all
    within ``limit`` (-1: no limit), else the closest before, the closest at or after, then the
    temporally closest others."""
    if limit == -1 or len(cond) <= limit:
        return list(cond), []
    picked: list[int] = []
    before = max((t for t in cond if t < frame), default=None)
    after = min((t for t in cond if t >= frame), default=None)
    picked += [t for t in (before, after) if t is not None]
    rest = sorted((t for t in cond if t not in picked), key=lambda t: abs(t - frame))
    picked += rest[: limit - len(picked)]
    return picked, [t for t in cond if t not in picked]


def memory_plan(frame: int, cond: list[int], tracked: set[int], num_frames: int,
                cfg: MemoryConfig = MemoryConfig()) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:  # fmt: skip
    """What a tracked frame attends to, as sam2's ``_prepare_memory_conditioned_features`` picks it
    (forward in time): ``memory`` [(frame, t_pos)] (conditioning frames at t_pos 0, then the last
    ``num_maskmem - 1`` frames before this one, every ``stride``-th), ``pointers`` [(frame, offset)]
    (the conditioning frames' (in the past only, by default), then up to ``max_obj_ptrs - 1`` frames
    just before). ``cond``: the frames prompted (in the order they were added), ``tracked`` the
    others that have an output; missing frames are skipped."""
    selected, unselected = closest_cond_frames(frame, cond, cfg.max_cond_frames)
    memory = [(t, 0) for t in selected]
    for t_pos in range(1, cfg.num_maskmem):
        t_rel = cfg.num_maskmem - t_pos
        if t_rel == 1:
            prev = frame - 1
        else:
            prev = ((frame - 2) // cfg.stride) * cfg.stride - (t_rel - 2) * cfg.stride
        if prev in tracked or prev in unselected:
            memory.append((prev, t_pos))
    ptr_cond = [t for t in selected if t <= frame] if cfg.ptrs_only_past else selected
    pointers = [(t, frame - t if cfg.signed_ptr_offsets else abs(frame - t)) for t in ptr_cond]
    for t_diff in range(1, min(num_frames, cfg.max_obj_ptrs)):
        t = frame - t_diff
        if t < 0 or t >= num_frames:
            break
        if t in tracked or t in unselected:
            pointers.append((t, t_diff))
    return memory, pointers


@dataclass(frozen=True)
class TrackConfig:
    """The model's tracking settings (sam2's names in comments) and the session's bounds."""

    image_size: int
    heads: HeadsConfig = HeadsConfig()
    memory: MemoryConfig = MemoryConfig()
    multimask_in_sam: bool = True  # multimask_output_in_sam
    multimask_for_tracking: bool = True  # multimask_output_for_tracking
    multimask_points: tuple[int, int] = (0, 1)  # multimask_min_pt_num, multimask_max_pt_num
    max_cond_frames: int = 4  # prompted frames kept per object (sam2 keeps all)
    max_objects: int = 32  # objects tracked at once in one session

    @classmethod
    def from_settings(cls, s: dict, **bounds) -> TrackConfig:
        """From the model's settings as the manifest records them (``tracking_settings``)."""
        heads = HeadsConfig(multimask_token_for_ptr=s["use_multimask_token_for_obj_ptr"],
                            dynamic_fallback=s["dynamic_multimask_via_stability"],
                            stability_delta=s["dynamic_multimask_stability_delta"],
                            stability_thresh=s["dynamic_multimask_stability_thresh"], pred_obj_scores=s["pred_obj_scores"])  # fmt: skip
        memory = MemoryConfig(num_maskmem=s["num_maskmem"], max_cond_frames=s["max_cond_frames_in_attn"],
                              stride=s["memory_temporal_stride_for_eval"], max_obj_ptrs=s["max_obj_ptrs_in_encoder"],
                              ptrs_only_past=s["only_obj_ptrs_in_the_past_for_eval"],
                              signed_ptr_offsets=s["use_signed_tpos_enc_to_obj_ptrs"])  # fmt: skip
        return cls(image_size=s["image_size"], heads=heads, memory=memory, multimask_in_sam=s["multimask_output_in_sam"],
                   multimask_for_tracking=s["multimask_output_for_tracking"],
                   multimask_points=(s["multimask_min_pt_num"], s["multimask_max_pt_num"]), **bounds)  # fmt: skip


def use_multimask(cfg: TrackConfig, first: bool, points: int) -> bool:
    """sam2's ``_use_multimask``: several masks for a first frame's single click (and, in SAM2.1,
    for tracked frames, which have no clicks)."""
    lo, hi = cfg.multimask_points
    return cfg.multimask_in_sam and (first or cfg.multimask_for_tracking) and lo <= points <= hi


def by_points(clicks: list[tuple]) -> dict[int, list[tuple]]:
    """Prompts (object id, coords, labels) grouped by their number of points: one decoder item
    each (sam2's prompt encoder is not invariant to padding points)."""
    groups: dict[int, list[tuple]] = {}
    for c in clicks:
        groups.setdefault(len(c[2]), []).append(c)
    return groups


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounded to nearest even as torch rounds."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)
