"""Tracking sessions behind every transport (issue 34): one ``TrackSession`` per stream, its frames
decoded, checked and answered in order through the scheduler (so frames and objects of concurrent
sessions share batches), its state bounded and freed when the stream ends. Knows nothing of
protobuf or HTTP."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

import numpy as np

from seglabel_server.amg import decode_rle, encode_rle, masks_to_boxes
from seglabel_server.errors import DeadlineExceeded, InvalidArgument, LimitExceeded, NotFound, SeglabelError
from seglabel_server.models.images import video_preprocess
from seglabel_server.pipeline.track_models import ScheduledTrackModels
from seglabel_server.pipeline.tracker import Prompt, TrackSession
from seglabel_server.pipeline.tracking import TrackConfig
from seglabel_server.rle import Upsampler
from seglabel_server.scheduler.batching import DEFAULT
from seglabel_server.service.params import plan_segment, resolve_relabel
from seglabel_server.types import LabelResult, RequestContext, SegmentOptions

FILE, LIVE = "file", "live"
WAITING = 2  # FILE: frames read ahead of the one being answered (flow control holds the rest)


@dataclass
class TrackOptions:
    mode: str = FILE
    num_frames: int = 0  # 0: unknown
    labelling: SegmentOptions | None = None  # the label fields (vocabulary or vocabulary_name); None: none
    label_every: int = 5
    detect: SegmentOptions | None = None  # the grid's options on frames that ask to detect (None: defaults)
    first_detected_id: int = 10000  # detection's ids count from here (the client's stay its own)


@dataclass
class TrackFrame:
    """One frame of the stream with the prompts and removals that come with it."""

    index: int
    image: bytes
    prompts: list[Prompt] = field(default_factory=list)
    remove: list[int] = field(default_factory=list)
    detect: bool = False  # the grid on this frame starts objects for masks no track covers

    @property
    def droppable(self) -> bool:
        return not self.prompts and not self.remove and not self.detect


@dataclass
class TrackedObject:
    obj_id: int
    rle: dict
    bbox: list[float]  # [x, y, w, h]; empty when absent
    area: int
    score: float
    iou: float
    prompted: bool
    mask: np.ndarray | None = None  # [H, W] bool, for the labels (not sent)
    label: LabelResult | None = None
    label_changed: bool = False
    detected: bool = False  # started on this frame by the grid (detect)


class TrackLabels:
    """Each track's label from the mean of its crops' CLIP embeddings over the frames labelled so
    far: one crop cannot flip it, many consistent ones can."""

    def __init__(self, scorer, spec, every: int):
        self.scorer, self.spec, self.every = scorer, spec, max(1, every)
        self.sums: dict[int, np.ndarray] = {}
        self.labels: dict[int, LabelResult] = {}  # each track's label, scored when its sum changes

    async def label(self, pipeline, image: np.ndarray, index: int, objects: list[TrackedObject], ctx,
                    every: bool = True) -> None:  # fmt: skip
        """Label the objects prompted on this frame, and (``every``) all on every N-th frame."""
        todo = [o for o in objects if o.area and (o.prompted or (every and index % self.every == 0))]
        if todo:
            emb = await pipeline.embed_regions(image, [(o.mask, o.bbox) for o in todo], ctx)
            for o, e in zip(todo, emb):
                k = o.obj_id
                self.sums[k] = self.sums.get(k, 0.0) + e / max(np.linalg.norm(e), 1e-12)
                mean = (self.sums[k] / max(np.linalg.norm(self.sums[k]), 1e-12))[None].astype(np.float32)
                label = self.scorer.classify(mean, k, self.spec.top_k, self.spec.min_confidence)[0]
                o.label_changed = k in self.labels and self.labels[k].label != label.label
                self.labels[k] = label
        for o in objects:
            o.label = self.labels.get(o.obj_id)

    def forget(self, obj_id: int) -> None:
        self.sums.pop(obj_id, None)
        self.labels.pop(obj_id, None)


@dataclass
class TrackAnswer:
    index: int
    width: int
    height: int
    objects: list[TrackedObject]
    dropped: list[int]
    timings: dict[str, float]
    state_bytes: int


class _Inbox:
    """Frames read ahead of the one being answered: FILE holds up to ``WAITING`` (the reader
    waits, and with it the transport's flow control); LIVE keeps only the newest droppable frame
    (those it replaces are reported as dropped)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.items: collections.deque = collections.deque()
        self.dropped: list[int] = []
        self.changed = asyncio.Condition()

    async def put(self, item) -> None:
        async with self.changed:
            if self.mode == FILE:
                await self.changed.wait_for(lambda: len(self.items) < WAITING)
            elif isinstance(item, TrackFrame) and item.droppable:
                stale = [isinstance(x, TrackFrame) and x.droppable for x in self.items]
                self.dropped += [x.index for x, old in zip(self.items, stale) if old]
                self.items = collections.deque(x for x, old in zip(self.items, stale) if not old)
            self.items.append(item)
            self.changed.notify_all()

    async def get(self):
        async with self.changed:
            await self.changed.wait_for(lambda: bool(self.items))
            item = self.items.popleft()
            self.changed.notify_all()
            return item


class Tracking:
    """Opens, runs and bounds the server's tracking sessions."""

    def __init__(self, cfg, lifecycle, admission, images, vocabularies, metrics):
        self.cfg, self.lifecycle, self.admission, self.images = cfg, lifecycle, admission, images
        self.vocabularies, self.metrics = vocabularies, metrics
        self.sessions = 0  # open now

    def limits(self) -> dict:
        p = self.cfg.pipeline
        return {"max_track_sessions": p.max_track_sessions, "max_track_objects": p.max_track_objects,
                "track_idle_s": p.track_idle_s}  # fmt: skip

    async def open(self, options: TrackOptions, ctx: RequestContext):
        """A session's checks (served, within the limits, its options and labels resolved) before
        any frame: returns ``answers(frames)``, the session's async iterator of answers, one per
        frame answered; the session ends (its state freed) when ``frames`` ends, on the first error
        (raised after the answers before it), or when the consumer stops iterating."""
        self.lifecycle.require_ready()
        self.lifecycle.require("tracking", "tracking")
        p = self.cfg.pipeline
        if self.sessions >= p.max_track_sessions:
            raise LimitExceeded(f"{p.max_track_sessions} tracking sessions are open (--max-track-sessions)")
        if options.mode not in (FILE, LIVE):
            raise InvalidArgument(f"track mode {options.mode!r}: file or live")
        loaded = self.lifecycle.loaded
        labels = None
        if options.labelling is not None:
            self.lifecycle.require("labels", "labelling tracks")
            spec = await self.vocabularies.spec(resolve_relabel(p, options.labelling), ctx)
            labels = TrackLabels(await loaded.pipeline.labels.scorer(spec, ctx), spec, options.label_every)
        settings = loaded.repo.manifest["sam2_video"]["tracking"]
        tcfg = TrackConfig.from_settings(
            settings, max_cond_frames=p.track_cond_frames, max_objects=p.max_track_objects
        )
        session = TrackSession(
            ScheduledTrackModels(loaded.pipeline.scheduler, ctx), tcfg, options.num_frames or None
        )
        return lambda frames: self._run(session, options, labels, frames, ctx)

    async def _run(self, session: TrackSession, options: TrackOptions, labels, frames, ctx):
        inbox = _Inbox(options.mode)
        self.sessions += 1
        self.metrics.track_sessions.set(self.sessions)
        reader = asyncio.create_task(self._read(frames, inbox, self.cfg.pipeline.track_idle_s))
        try:
            last: tuple[int, np.ndarray] | None = None  # the frame last answered: its index and pixels
            while (item := await inbox.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                if item.image:
                    answer, last = await self._answer(session, item, last, inbox, labels, options, ctx)
                else:
                    answer = await self._again(session, item, last, inbox, labels, options, ctx)
                self.metrics.track_frames.inc()
                yield answer
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            ctx.cancel()
            session.objects.clear()
            self.sessions -= 1
            self.metrics.track_sessions.set(self.sessions)

    async def _read(self, frames: AsyncIterator[TrackFrame], inbox: _Inbox, idle_s: float) -> None:
        """The stream's frames into the inbox; its end (None) or its failure after them."""
        try:
            while True:
                try:
                    item = await asyncio.wait_for(anext(frames), idle_s)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    self.metrics.track_expired.inc()
                    raise DeadlineExceeded(
                        f"no frame for {idle_s:g} s: the tracking session is ended and its state freed"
                    ) from None
                await inbox.put(item)
            await inbox.put(None)
        except (SeglabelError, Exception) as exc:  # handed to the answering loop, which raises it
            await inbox.put(exc)

    async def _detect(self, session: TrackSession, image: np.ndarray, objects: list[TrackedObject],
                      options: TrackOptions, ctx) -> list[TrackedObject]:  # fmt: skip
        """The grid on the frame just tracked: each mask that tracks (and masks found before it)
        cover less than half of starts an object, its box as the prompt, with a new id."""
        params = replace(
            options.detect or SegmentOptions(), prompt_type="grid", skip_labels=True, return_overlay=False
        )
        job = plan_segment(self.cfg.pipeline, params, self.lifecycle.capabilities)
        result = await self.lifecycle.loaded.pipeline.run(job, image, ctx)
        covered = np.zeros(image.shape[:2], bool)
        for o in objects:
            if o.mask is not None:
                covered |= o.mask
        prompts, next_id = [], options.first_detected_id
        for m in result.masks:
            mask = decode_rle(m.rle)
            if (mask & covered).sum() * 2 > mask.sum():
                continue
            x, y, w, h = m.bbox
            prompts.append(Prompt(next_id, box=(x, y, x + w, y + h)))
            covered |= mask
            next_id += 1
        options.first_detected_id = next_id  # the session's next detection counts on from here
        found = (
            await asyncio.to_thread(_objects, await session.prompt(prompts), image.shape[:2])
            if prompts
            else []
        )
        for o in found:
            o.detected = True
        return found

    @staticmethod
    def _remove(session: TrackSession, frame: TrackFrame, labels) -> None:
        for k in frame.remove:
            if not session.remove(k):
                raise NotFound(f"frame {frame.index}: no object {k} is tracked")
            if labels is not None:
                labels.forget(k)

    async def _again(self, session: TrackSession, frame: TrackFrame, last, inbox: _Inbox, labels,
                     options: TrackOptions, ctx) -> TrackAnswer:  # fmt: skip
        """A message without an image: prompts (and removals, detection) on the frame last answered,
        a paused video's clicks. Answers that frame again: every object, the prompted ones as the
        clicks changed them."""
        t0 = time.perf_counter()
        if last is None:
            raise InvalidArgument(
                f"frame {frame.index} has no image, and no frame was answered yet to prompt on"
            )
        index, image = last
        if frame.index != index:
            raise InvalidArgument(
                f"frame {frame.index} has no image: a message without one prompts the frame last answered ({index})"
            )
        if not (frame.prompts or frame.remove or frame.detect):
            raise InvalidArgument(f"frame {frame.index} has no image and nothing to do on the frame last answered")  # fmt: skip
        self._remove(session, frame, labels)
        h, w = image.shape[:2]
        async with self.admission.admit(DEFAULT, ctx=ctx) as ticket:
            ticket.charge(w * h * (1 + len(session.objects) + len(frame.prompts)))
            session.models.times.clear()
            if frame.prompts:
                await session.prompt(frame.prompts)
            asked = {p.obj_id for p in frame.prompts}
            answers = [replace(a, prompted=a.obj_id in asked) for a in session.answers()]
            return await self._reply(session, index, image, answers, frame, inbox, labels, options, ctx,
                                     {}, t0, every=False)  # fmt: skip

    async def _reply(self, session: TrackSession, index: int, image: np.ndarray, answers, frame: TrackFrame,
                     inbox: _Inbox, labels, options: TrackOptions, ctx, timings: dict, t0: float,
                     every: bool = True) -> TrackAnswer:  # fmt: skip
        """A frame's answer: its objects' masks at its size, what ``detect`` starts, the labels
        (``every``: also the N-th frame's, not only the prompted objects'), the timings."""
        h, w = image.shape[:2]
        t2 = time.perf_counter()
        objects = await asyncio.to_thread(_objects, answers, (h, w))
        if frame.detect:
            objects += await self._detect(session, image, objects, options, ctx)
        t3 = time.perf_counter()
        if labels is not None:
            await labels.label(self.lifecycle.loaded.pipeline, image, index, objects, ctx, every=every)
        dropped, inbox.dropped = inbox.dropped, []
        t4 = time.perf_counter()
        timings = {**timings, **session.models.times, "upsample": (t3 - t2) * 1e3, "clip": (t4 - t3) * 1e3,
                   "queue": ctx.queue_ms, "total": (t4 - t0) * 1e3}  # fmt: skip
        return TrackAnswer(index, w, h, objects, dropped, timings, sum(session.state_bytes().values()))

    async def _answer(self, session: TrackSession, frame: TrackFrame, last, inbox: _Inbox, labels,
                      options: TrackOptions, ctx):  # fmt: skip
        t0 = time.perf_counter()
        self._remove(session, frame, labels)
        async with self.admission.admit(DEFAULT, ctx=ctx) as ticket:
            opened = await self.images.open(None, frame.image, "TrackRequest")
            w, h = opened.width, opened.height
            size = None if last is None else (last[1].shape[1], last[1].shape[0])
            if size is not None and (w, h) != size:
                raise InvalidArgument(
                    f"frame {frame.index} is {w}x{h}; this session's frames are {size[0]}x{size[1]}"
                )
            n = len(session.objects) + len(frame.prompts)
            ticket.charge(w * h * (3 + n) + 4 * 3 * session.cfg.image_size**2)
            image, decode_ms = await self.images.decode(opened)
            sam = self.lifecycle.loaded.repo.sam2
            pixels = await asyncio.to_thread(video_preprocess, image, session.cfg.image_size, sam["pixel_mean"], sam["pixel_std"])  # fmt: skip
            session.models.times.clear()
            answers = await session.step(frame.index, pixels[None], (h, w), frame.prompts)
            answer = await self._reply(session, frame.index, image, answers, frame, inbox, labels, options, ctx,
                                       {"decode_image": decode_ms}, t0)  # fmt: skip
        return answer, (frame.index, image)


def _objects(answers, hw: tuple[int, int]) -> list[TrackedObject]:
    """Each object's mask at the frame's size (bilinear from the low-resolution logits, as sam2's
    predictor resizes them), its RLE, box and area."""
    out = []
    up = Upsampler(answers[0].logits.shape[-1], hw) if answers else None
    for a in answers:
        mask = up(a.logits) if a.score > 0 else np.zeros(hw, bool)
        area = int(mask.sum())
        box = masks_to_boxes(mask[None])[0].tolist() if area else []
        bbox = [box[0], box[1], box[2] - box[0] + 1, box[3] - box[1] + 1] if box else []
        out.append(TrackedObject(a.obj_id, encode_rle(mask), bbox, area, a.score, a.iou, a.prompted, mask))
    return out
