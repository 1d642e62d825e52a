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

Clicks on the frame just answered (``prompt``: a paused video) are sam2's clicks before it
propagates again: a new object starts there; an object prompted on this frame is refined (SAM on
the frame alone with all its clicks, its current mask as the dense prompt); an object tracked onto
this frame is corrected (its memory-conditioned features with the clicks and its current mask), and
the frame becomes one of its prompted frames (sam2's ``add_all_frames_to_correct_as_cond``: the
correction is kept as long as the first prompt, not forgotten after ``num_maskmem`` frames). The
frame's memory is written once the clicks are done, before the next frame, as sam2's
``propagate_in_video_preflight`` writes it.

The model calls go through ``TrackModels``: the scheduler's stages when served
(``ScheduledTrackModels``), a backend directly in tools, tests and benchmarks
(``DirectTrackModels``); the kinds turn the items into each graph's inputs."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from seglabel_server.errors import InvalidArgument, LimitExceeded
from seglabel_server.models.kinds.video import ConditionRequest, MemoryRequest, TrackDecodeRequest
from seglabel_server.pipeline.track_models import TrackModels
from seglabel_server.pipeline.tracking import (
    TrackConfig,
    by_points,
    from_bf16,
    memory_plan,
    select_heads,
    to_bf16,
    use_multimask,
)

UNBOUNDED = 1 << 30  # a stream's length when it is not known (sam2 reads the video's)


@dataclass
class Prompt:
    """Clicks and/or a box for one object on one frame, in the frame's pixels. A box goes first,
    as sam2 adds it (two points labelled 2 and 3)."""

    obj_id: int
    points: Sequence[tuple[float, float]] = ()
    labels: Sequence[int] = ()  # 1 foreground, 0 background
    box: tuple[float, float, float, float] | None = None

    def model_points(self, width: int, height: int, size: int) -> tuple[np.ndarray, np.ndarray]:
        """(coords [P, 2] in the model's square input, labels [P]) as sam2 scales them; a prompt
        off the frame or malformed is the caller's error."""
        who = f"object {self.obj_id}"
        if len(self.points) != len(self.labels):
            raise InvalidArgument(f"{who}: {len(self.points)} points but {len(self.labels)} labels")
        if not self.points and self.box is None:
            raise InvalidArgument(f"{who}: a prompt needs points or a box")
        if any(v not in (0, 1) for v in self.labels):
            raise InvalidArgument(f"{who}: point labels are 1 (foreground) or 0 (background)")
        xy = ([(self.box[0], self.box[1]), (self.box[2], self.box[3])] if self.box else []) + list(
            self.points
        )
        coords = np.asarray(xy, np.float64).reshape(-1, 2)
        if (
            not np.isfinite(coords).all()
            or (coords < 0).any()
            or (coords[:, 0] > width).any()
            or (coords[:, 1] > height).any()
        ):
            raise InvalidArgument(f"{who}: prompt outside the {width}x{height} frame")
        if self.box is not None and not (self.box[0] < self.box[2] and self.box[1] < self.box[3]):
            raise InvalidArgument(f"{who}: a box is x0,y0,x1,y1 with x0 < x1 and y0 < y1")
        lab = ([2, 3] if self.box else []) + [int(v) for v in self.labels]
        scaled = coords / np.array([width, height]) * size
        return scaled.astype(np.float32), np.asarray(lab, np.int32)


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


def _rows(ids: list[int], chosen, score) -> dict[int, tuple[np.ndarray, float, np.ndarray, float]]:
    """``select_heads``'s choice per object: (low-res logits, IoU, pointer, object score)."""
    low, iou, ptr = chosen
    return {k: (low[i, 0], float(iou[i]), ptr[i], float(score[i, 0])) for i, k in enumerate(ids)}


class TrackSession:
    """One video's or stream's tracking state. ``step`` takes the frames in increasing index
    (a live stream may skip indices); prompts given with a frame apply to it."""

    def __init__(self, models: TrackModels, cfg: TrackConfig, num_frames: int | None = None):
        self.models, self.cfg = models, cfg
        self.num_frames = num_frames or UNBOUNDED
        self.objects: dict[int, ObjectTrack] = {}
        self.last_frame = -1
        self._shapes: tuple[tuple[int, ...], int] = ((), 0)  # a memory entry's [Cm, H, W], a pointer's C
        self._last: tuple | None = None  # the last frame's encoder outputs and (height, width)
        # The last frame's answers while clicks may still change them: each object's row (low-res
        # logits, IoU, pointer, score), the objects prompted on it, the conditioned features of
        # tracked objects being corrected, and the objects whose memory of it is still to write.
        self._rows: dict[int, tuple[np.ndarray, float, np.ndarray, float]] = {}
        self._started: set[int] = set()
        self._embeds: dict[int, np.ndarray] = {}
        self._pending: set[int] = set()

    def remove(self, obj_id: int) -> bool:
        for held in (self._rows, self._embeds):
            held.pop(obj_id, None)
        self._pending.discard(obj_id)
        self._started.discard(obj_id)
        return self.objects.pop(obj_id, None) is not None

    def state_bytes(self) -> dict[int, int]:
        return {k: o.nbytes() for k, o in self.objects.items()}

    async def step(self, frame: int, pixels: np.ndarray, size: tuple[int, int],
                   prompts: Sequence[Prompt] = ()) -> list[ObjectFrame]:  # fmt: skip
        """Track every object onto frame ``frame`` (``pixels`` [1, 3, S, S] as the video loader
        prepares them; ``size`` the frame's (height, width)); ``prompts`` start or restart objects
        on it. Answers in object order (the order they were first prompted)."""
        if frame <= self.last_frame:
            raise InvalidArgument(f"frame {frame} after frame {self.last_frame}: frames go forward")
        by_obj = {p.obj_id: p for p in prompts}
        if len(by_obj) != len(prompts):
            raise InvalidArgument("one prompt per object and frame (points and a box go in one prompt)")
        clicks = self._clicks(prompts, size, sum(k not in self.objects for k in by_obj))  # before any work
        await self._commit()
        feats = await self.models.encode(pixels)
        for obj_id in by_obj:
            self.objects.setdefault(obj_id, ObjectTrack())
        tracked = [k for k, o in self.objects.items() if k not in by_obj and o.frames]
        rows: dict[int, tuple[np.ndarray, float, np.ndarray, float]] = {}
        if tracked:
            rows.update(await self._track(frame, feats, tracked))
        rows.update(await self._first(feats, clicks))
        order = [k for k in self.objects if k in rows]
        self.last_frame, self._last = frame, (feats, size)
        self._rows, self._started, self._embeds = rows, set(by_obj), {}
        self._pending = set(order)
        await self._commit()
        return [ObjectFrame(k, rows[k][0], rows[k][3], rows[k][1], k in by_obj) for k in order]

    async def prompt(self, prompts: Sequence[Prompt]) -> list[ObjectFrame]:
        """Prompts on the frame just answered (its features are kept): a detector's finds, clicks
        on a paused video. A new id starts an object there; an object prompted on this frame is
        refined, one tracked onto it corrected (the module's docstring). A prompt carries all the
        object's clicks on this frame (the client keeps them, as sam2's predictor takes them).
        Answers the prompted objects on that frame; ``answers()`` has every object's."""
        if self._last is None:
            raise InvalidArgument("no frame answered yet to prompt on")
        feats, size = self._last
        ids = [p.obj_id for p in prompts]
        if len(set(ids)) != len(ids):
            raise InvalidArgument("one prompt per object and frame (points and a box go in one prompt)")
        clicks = self._clicks(prompts, size, sum(k not in self.objects for k in ids))
        new = [c for c in clicks if c[0] not in self.objects]
        again = [c for c in clicks if c[0] in self._started]
        tracked = [c for c in clicks if c[0] in self.objects and c[0] not in self._started]
        rows = await self._first(feats, new) if new else {}
        if again:
            rows.update(await self._first(feats, again, [self._mask(c[0]) for c in again]))
        if tracked:
            rows.update(await self._correct(feats, tracked))
        for k in ids:
            self.objects.setdefault(k, ObjectTrack())
        self._rows.update(rows)
        self._started |= {c[0] for c in new + again}
        self._pending |= set(ids)
        return [ObjectFrame(k, *self._answer(k), True) for k in ids]

    def answers(self) -> list[ObjectFrame]:
        """Every object's answer on the frame just answered, clicks made on it since included
        (``prompted``: prompted on it)."""
        return [ObjectFrame(k, *self._answer(k), k in self._started) for k in self.objects if k in self._rows]

    def _answer(self, k: int) -> tuple[np.ndarray, float, float]:
        low, iou, _, score = self._rows[k]
        return low, score, iou

    def _mask(self, k: int) -> np.ndarray:
        """An object's current low-res logits on the last frame as the decoder's dense prompt,
        clamped as sam2 clamps ``prev_sam_mask_logits``."""
        return np.clip(self._rows[k][0], -32.0, 32.0)[None]

    async def _correct(self, feats, clicks: list[tuple[int, np.ndarray, np.ndarray]]) -> dict[int, tuple]:
        """Tracked objects corrected on the last frame: their memory-conditioned features (as
        tracking made them: the plan reads the memory written before this frame's clicks, so they
        are kept for the next click on it), the clicks and the current mask as prompts."""
        todo = [c[0] for c in clicks if c[0] not in self._embeds]
        reqs = [self._condition_request(feats, k, self.last_frame) for k in todo]
        for k, e in zip(todo, await asyncio.gather(*(self.models.condition(r) for r in reqs))):
            self._embeds[k] = np.asarray(e)
        out: dict[int, tuple] = {}
        for n, group in by_points(clicks).items():
            req = TrackDecodeRequest(
                feats, np.concatenate([self._embeds[g[0]] for g in group]), np.stack([g[1] for g in group]),
                np.stack([g[2] for g in group]), np.stack([self._mask(g[0]) for g in group]),
            )  # fmt: skip
            outs = await self.models.decode(req)
            chosen = select_heads(*outs, use_multimask(self.cfg, False, n), self.cfg.heads)
            out.update(_rows([g[0] for g in group], chosen, outs[3]))
        return out

    async def _commit(self) -> None:
        """The last frame's memory of the objects answered or prompted on it since, written once
        (as sam2's ``propagate_in_video_preflight``): a prompted object's mask binarised, and the
        frame one of its prompted frames."""
        if not self._pending or self._last is None:
            return
        order = [k for k in self.objects if k in self._pending and k in self._rows]
        self._pending = set()
        await self._remember(
            self.last_frame, self._last[0], order, self._rows, self._started | set(self._embeds)
        )

    def _clicks(self, prompts: Sequence[Prompt], size: tuple[int, int], new: int) -> list[tuple]:
        """The prompts checked (room for ``new`` more objects, each prompt inside the frame) and
        scaled to the model's input: (object id, coords, labels) each."""
        if len(self.objects) + new > self.cfg.max_objects:
            raise LimitExceeded(f"at most {self.cfg.max_objects} objects per session")
        h, w = size
        return [(p.obj_id, *p.model_points(w, h, self.cfg.image_size)) for p in prompts]

    async def _first(self, frame, clicks: list[tuple[int, np.ndarray, np.ndarray]],
                     masks: Sequence[np.ndarray] = ()) -> dict[int, tuple]:  # fmt: skip
        """SAM on the frame alone for each prompted object (id, coords, labels), one decoder item
        per number of points (sam2's prompt encoder is not invariant to padding points); with
        ``masks`` (one per click, refining an object prompted here) each its dense prompt."""
        out: dict[int, tuple] = {}
        mask_of = {c[0]: m for c, m in zip(clicks, masks)}
        for n, group in by_points(clicks).items():
            dense = np.stack([mask_of[g[0]] for g in group]) if mask_of else None
            req = TrackDecodeRequest(
                frame, None, np.stack([g[1] for g in group]), np.stack([g[2] for g in group]), dense
            )
            outs = await self.models.decode(req)
            chosen = select_heads(*outs, use_multimask(self.cfg, True, n), self.cfg.heads)
            out.update(_rows([g[0] for g in group], chosen, outs[3]))
        return out

    def _condition_request(self, frame, obj_id: int, at: int) -> ConditionRequest:
        """One object's memory plan on frame ``at`` as the conditioner's inputs (batch 1)."""
        cfg, o = self.cfg.memory, self.objects[obj_id]
        cond = [t for t in o.cond if t in o.frames]
        mem, pts = memory_plan(at, cond, set(o.frames) - set(cond), self.num_frames, cfg)
        t_max = min(self.num_frames, cfg.max_obj_ptrs) - 1
        n = max(1, len(pts))
        ptrs, ppos, pvalid = (
            np.zeros((1, n, self._shapes[1]), np.float32),
            np.zeros((1, n), np.float32),
            np.zeros((1, n), np.float32),
        )
        for j, (t, off) in enumerate(pts):
            ptrs[0, j], ppos[0, j], pvalid[0, j] = o.frames[t].ptr, off / t_max, 1.0
        return ConditionRequest(
            frame, np.stack([from_bf16(o.frames[t].feats) for t, _ in mem])[None],
            np.array([[p for _, p in mem]], np.int64), np.ones((1, len(mem)), np.float32), ptrs, ppos, pvalid,
        )  # fmt: skip

    async def _track(self, at: int, frame, ids: list[int]) -> dict[int, tuple]:
        """Every tracked object onto this frame: each one's memory read in (one conditioner item
        per object: the scheduler batches them, with other sessions' too), then one decoder item
        with no clicks."""
        reqs = [self._condition_request(frame, k, at) for k in ids]
        embeds = await asyncio.gather(*(self.models.condition(r) for r in reqs))
        b = len(ids)
        req = TrackDecodeRequest(frame, np.concatenate([np.asarray(e) for e in embeds]),
                                 np.zeros((b, 1, 2), np.float32), -np.ones((b, 1), np.int32))  # fmt: skip
        outs = await self.models.decode(req)
        chosen = select_heads(*outs, use_multimask(self.cfg, False, 0), self.cfg.heads)
        return _rows(ids, chosen, outs[3])

    async def _remember(self, at: int, frame, order: list[int], rows, prompted: set[int]) -> None:
        """The frame's masks into each object's memory (one memory-encoder item), then what no
        later frame can read dropped."""
        if not order:
            return
        memory = np.asarray(await self.models.encode_memory(MemoryRequest(
            frame, np.stack([rows[k][0] for k in order])[:, None], np.array([[rows[k][3]] for k in order], np.float32),
            np.array([k in prompted for k in order], np.float32))))  # fmt: skip
        self._shapes = (memory.shape[1:], np.asarray(rows[order[0]][2]).shape[0])
        for i, k in enumerate(order):
            o = self.objects[k]
            o.frames[at] = Entry(to_bf16(memory[i]), np.asarray(rows[k][2], np.float32), rows[k][3])
            if k in prompted and at not in o.cond:
                o.cond.append(at)
            self._trim(o, at)

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
