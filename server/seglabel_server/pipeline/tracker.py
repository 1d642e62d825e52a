"""A tracking session (issue 34): SAM2's memory per object, kept bounded, over frames that arrive
one after another (a file's or a live stream's).

Each frame runs four model calls, each one batch for all the session's objects on that frame: the
image encoder (the image path's own), the memory conditioner (every tracked object's memory read
into the frame's features), the track decoder (per group of rows with the same number of points),
and the memory encoder (the frame's masks into each object's memory). What runs is sam2's
``SAM2VideoPredictor`` (proved equal on the same weights, ``tests/export/test_tracking.py``):

- an object prompted on a frame it has not been tracked on is a conditioning frame: SAM on that
  frame alone (the encoder's features with ``no_mem_embed``), its mask binarised into memory;
- every other object is tracked: its features conditioned on its memory (``memory_plan``), no
  clicks, multimask by sam2's rule, the object score deciding whether it is on the frame;
- memory features are stored as bfloat16 (as sam2 stores them), and only what a later frame can
  read is kept: the prompted frames (at most ``max_cond_frames`` per object: the first and the
  latest), the last ``num_maskmem`` frames' memory and the last ``max_obj_ptrs`` pointers. sam2's
  predictor keeps every frame's; here the state per object does not grow with the video.

The model calls go through ``TrackModels`` (the scheduler's stages when served; a backend's
sessions directly in tests and benchmarks), with feeds named as the exported graphs' inputs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from seglabel_server.pipeline.tracking import HeadsConfig, MemoryConfig, memory_plan, select_heads

UNBOUNDED = 1 << 30  # a stream's length when it is not known (sam2 reads the video's)


class TrackModels(Protocol):
    """The four graphs of the video path (inputs and outputs as ``torch_modules.video`` names
    them), each called with one batch of named numpy feeds."""

    async def encode(self, pixels: np.ndarray) -> dict[str, np.ndarray]: ...

    async def condition(self, feeds: dict[str, np.ndarray]) -> np.ndarray: ...

    async def decode(self, feeds: dict[str, np.ndarray]) -> Sequence[np.ndarray]: ...

    async def encode_memory(self, feeds: dict[str, np.ndarray]) -> np.ndarray: ...


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


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits (uint16), rounded to nearest even as torch rounds."""
    bits = np.ascontiguousarray(x, np.float32).view(np.uint32)
    rounded = bits + (0x7FFF + ((bits >> 16) & 1))
    return (rounded >> 16).astype(np.uint16)


def from_bf16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


@dataclass
class Prompt:
    """Clicks and/or a box for one object on one frame, in the frame's pixels. A box goes first,
    as sam2 adds it (two points labelled 2 and 3)."""

    obj_id: int
    points: Sequence[tuple[float, float]] = ()
    labels: Sequence[int] = ()  # 1 foreground, 0 background
    box: tuple[float, float, float, float] | None = None

    def model_points(self, width: int, height: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        xy = ([(self.box[0], self.box[1]), (self.box[2], self.box[3])] if self.box else []) + list(
            self.points
        )
        lab = ([2, 3] if self.box else []) + [int(v) for v in self.labels]
        coords = np.asarray(xy, np.float32).reshape(-1, 2) / np.array([width, height], np.float32) * size
        return coords.astype(np.float32), np.asarray(lab, np.int32)


@dataclass
class Entry:
    """What one frame left in an object's memory."""

    feats: np.ndarray | None  # [Cm, H, W] bfloat16 bits; None once older than the memory window
    ptr: np.ndarray  # [C]
    score: float


@dataclass
class ObjectTrack:
    cond: list[int] = field(default_factory=list)  # its prompted frames, in the order prompted
    frames: dict[int, Entry] = field(default_factory=dict)

    def nbytes(self) -> int:
        return sum(
            (e.feats.nbytes if e.feats is not None else 0) + e.ptr.nbytes for e in self.frames.values()
        )


@dataclass
class ObjectFrame:
    """One object's answer on one frame."""

    obj_id: int
    logits: np.ndarray  # [4H, 4W] low-resolution mask logits (sam2's NO_OBJ_SCORE where absent)
    score: float  # object score logit: > 0 on the frame
    iou: float
    prompted: bool


class TrackSession:
    """One video's or stream's tracking state. ``step`` takes the frames in increasing index
    (a live stream may skip indices); prompts given with a frame apply to it."""

    def __init__(self, models: TrackModels, cfg: TrackConfig, num_frames: int | None = None):
        self.models, self.cfg = models, cfg
        self.num_frames = num_frames or UNBOUNDED
        self.objects: dict[int, ObjectTrack] = {}
        self.last_frame = -1
        self._shapes: tuple[tuple[int, ...], int] = ((), 0)  # a memory entry's [Cm, H, W], a pointer's C

    def remove(self, obj_id: int) -> bool:
        return self.objects.pop(obj_id, None) is not None

    def state_bytes(self) -> dict[int, int]:
        return {k: o.nbytes() for k, o in self.objects.items()}

    async def step(self, frame: int, pixels: np.ndarray, size: tuple[int, int],
                   prompts: Sequence[Prompt] = ()) -> list[ObjectFrame]:  # fmt: skip
        """Track every object onto frame ``frame`` (``pixels`` [1, 3, S, S] as the video loader
        prepares them; ``size`` the frame's (height, width)); ``prompts`` start or restart objects
        on it. Answers in object order (the order they were first prompted)."""
        if frame <= self.last_frame:
            raise ValueError(f"frame {frame} after frame {self.last_frame}: frames go forward")
        feats = await self.models.encode(pixels)
        by_obj = {p.obj_id: p for p in prompts}
        for obj_id in by_obj:
            self.objects.setdefault(obj_id, ObjectTrack())
        tracked = [k for k, o in self.objects.items() if k not in by_obj and o.frames]
        rows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, float]] = {}
        if tracked:
            rows.update(await self._track(frame, feats, tracked))
        rows.update(await self._first(feats, size, [by_obj[k] for k in by_obj]))
        order = [k for k in self.objects if k in rows]
        await self._remember(frame, feats, order, rows, set(by_obj))
        self.last_frame = frame
        return [ObjectFrame(k, rows[k][0], rows[k][3], float(rows[k][1]), k in by_obj) for k in order]

    def _decode_feeds(self, feats, embed, coords, labels) -> dict[str, np.ndarray]:
        b = embed.shape[0]
        low = self.cfg.image_size // 4
        return {"image_embed": embed, "high_res_feats_0": feats["high_res_feats_0"],
                "high_res_feats_1": feats["high_res_feats_1"], "rows": np.zeros(b, np.int64),
                "point_coords": coords, "point_labels": labels,
                "mask_input": np.zeros((b, 1, low, low), np.float32), "has_mask": np.zeros(b, np.float32)}  # fmt: skip

    async def _first(self, feats, size, prompts: list[Prompt]) -> dict[int, tuple]:
        """SAM on the frame alone for each prompted object, one decoder batch per number of points
        (sam2's prompt encoder is not invariant to padding points)."""
        out: dict[int, tuple] = {}
        groups: dict[int, list[tuple[Prompt, np.ndarray, np.ndarray]]] = {}
        h, w = size
        for p in prompts:
            coords, labels = p.model_points(w, h, self.cfg.image_size)
            if len(labels) == 0:
                raise ValueError(f"object {p.obj_id}: a prompt needs points or a box")
            groups.setdefault(len(labels), []).append((p, coords, labels))
        for n, group in groups.items():
            embed = np.repeat(feats["image_embed"], len(group), axis=0)
            masks, ious, ptrs, score = await self.models.decode(self._decode_feeds(
                feats, embed, np.stack([g[1] for g in group]), np.stack([g[2] for g in group])))  # fmt: skip
            low, iou, ptr = select_heads(np.asarray(masks), np.asarray(ious), np.asarray(ptrs), np.asarray(score),
                                         use_multimask(self.cfg, True, n), self.cfg.heads)  # fmt: skip
            for i, (p, _, _) in enumerate(group):
                out[p.obj_id] = (low[i, 0], iou[i], ptr[i], float(np.asarray(score)[i, 0]))
        return out

    async def _track(self, frame: int, feats, ids: list[int]) -> dict[int, tuple]:
        """Every tracked object onto this frame: its memory read in (one conditioner batch, rows
        padded), then the decoder with no clicks."""
        cfg = self.cfg.memory
        plans = []
        for k in ids:
            o = self.objects[k]
            cond = [t for t in o.cond if t in o.frames]
            plans.append(memory_plan(frame, cond, set(o.frames) - set(cond), self.num_frames, cfg))
        b = len(ids)
        m_len = max(len(mem) for mem, _ in plans)
        n_len = max(1, max(len(p) for _, p in plans))
        cm_shape, c = self._shapes
        memory = np.zeros((b, m_len, *cm_shape), np.float32)
        tpos, mvalid = np.zeros((b, m_len), np.int64), np.zeros((b, m_len), np.float32)
        ptrs, ppos, pvalid = (
            np.zeros((b, n_len, c), np.float32),
            np.zeros((b, n_len), np.float32),
            np.zeros((b, n_len), np.float32),
        )
        t_max = min(self.num_frames, cfg.max_obj_ptrs) - 1
        for i, (k, (mem, pts)) in enumerate(zip(ids, plans)):
            frames = self.objects[k].frames
            for j, (t, pos) in enumerate(mem):
                memory[i, j], tpos[i, j], mvalid[i, j] = from_bf16(frames[t].feats), pos, 1.0
            for j, (t, off) in enumerate(pts):
                ptrs[i, j], ppos[i, j], pvalid[i, j] = frames[t].ptr, off / t_max, 1.0
        embed = await self.models.condition({
            "image_embed": feats["image_embed"], "rows": np.zeros(b, np.int64), "memory": memory,
            "memory_tpos": tpos, "memory_valid": mvalid, "ptrs": ptrs, "ptr_pos": ppos, "ptr_valid": pvalid})  # fmt: skip
        coords, labels = np.zeros((b, 1, 2), np.float32), -np.ones((b, 1), np.int32)
        masks, ious, obj_ptrs, score = await self.models.decode(
            self._decode_feeds(feats, np.asarray(embed), coords, labels)
        )
        low, iou, ptr = select_heads(np.asarray(masks), np.asarray(ious), np.asarray(obj_ptrs), np.asarray(score),
                                     use_multimask(self.cfg, False, 0), self.cfg.heads)  # fmt: skip
        return {k: (low[i, 0], iou[i], ptr[i], float(np.asarray(score)[i, 0])) for i, k in enumerate(ids)}

    async def _remember(self, frame: int, feats, order: list[int], rows, prompted: set[int]) -> None:
        """The frame's masks into each object's memory (one memory-encoder batch), then what no
        later frame can read dropped."""
        b = len(order)
        if b == 0:
            return
        memory = await self.models.encode_memory({
            "image_embed": feats["image_embed"], "rows": np.zeros(b, np.int64),
            "mask_logits": np.stack([rows[k][0] for k in order])[:, None],
            "object_score": np.array([[rows[k][3]] for k in order], np.float32),
            "from_points": np.array([k in prompted for k in order], np.float32)})  # fmt: skip
        memory = np.asarray(memory)
        self._shapes = (memory.shape[1:], np.asarray(rows[order[0]][2]).shape[0])
        for i, k in enumerate(order):
            o = self.objects[k]
            o.frames[frame] = Entry(to_bf16(memory[i]), np.asarray(rows[k][2], np.float32), rows[k][3])
            if k in prompted:
                o.cond.append(frame)
            self._trim(o, frame)

    def _trim(self, o: ObjectTrack, frame: int) -> None:
        cfg = self.cfg.memory
        if len(o.cond) > self.cfg.max_cond_frames:  # keep the first and the latest
            o.cond = o.cond[:1] + o.cond[1 - self.cfg.max_cond_frames :]
        keep_cond = set(o.cond)
        mem_from = frame + 1 - cfg.stride * cfg.num_maskmem  # the oldest a later frame's plan reads
        ptr_from = frame + 1 - cfg.max_obj_ptrs
        for t in list(o.frames):
            if t in keep_cond:
                continue
            if t < mem_from and t < ptr_from:
                del o.frames[t]
            elif t < mem_from:
                o.frames[t].feats = None
