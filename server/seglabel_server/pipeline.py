"""What runs for a request: prompts -> encoder -> decoder batches -> filters on low-res logits ->
upsample survivors -> RLE -> CLIP crops -> labels -> overlay.

Model calls go through the scheduler (``encode``/``decode``/``embed_images``/``embed_texts``
awaitables); numpy work runs in a small thread pool so the asyncio loop stays free.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from seglabel_server import amg, imaging
from seglabel_server.errors import InvalidArgument, LimitExceeded
from seglabel_server.tokenizer import ClipTokenizer
from seglabel_server.types import (
    Accepted,
    Done,
    LabelResult,
    LabelsUpdate,
    MaskResult,
    MasksReady,
    Progress,
    RequestContext,
    SegmentParams,
    SegmentResult,
)
from seglabel_server.vocab import DEFAULT_VOCABULARY, TEMPLATES, UNKNOWN_LABEL

Emit = Callable[[object], Awaitable[None]]


@dataclass
class PipelineConfig:
    """Defaults (a request's zero means "use these") and limits. Thresholds follow sam2's AMG."""

    points_per_side: int = 16
    points_per_batch: int = 128
    pred_iou_thresh: float = 0.8
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    max_masks: int = 100
    top_k: int = 3
    clip_batch: int = 32
    crop_context: float = 0.15
    crop_background_keep: float = 0.2
    vocabulary: tuple[str, ...] = DEFAULT_VOCABULARY
    templates: tuple[str, ...] = TEMPLATES
    max_points_per_side: int = 64
    max_prompts: int = 256
    max_vocabulary: int = 1000
    max_label_chars: int = 100
    text_cache_size: int = 32


@dataclass
class _Candidates:
    """Masks that passed the filters: low-res logits and scores, best first."""

    logits: np.ndarray  # [K, L, L]
    iou: np.ndarray
    stability: np.ndarray
    points: list = field(default_factory=list)  # original-pixel prompt point per mask (or None)


class Pipeline:
    def __init__(
        self,
        cfg: PipelineConfig,
        sam2_meta: dict,
        clip_meta: dict | None,
        scheduler,
        tokenizer: ClipTokenizer | None,
        labels_unavailable_reason: str = "",
        cpu_threads: int = 2,
        upsample_on_backend=None,
    ):
        self.cfg = cfg
        self.sam = sam2_meta
        self.clip = clip_meta
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.has_clip = tokenizer is not None and clip_meta is not None and not labels_unavailable_reason
        self.labels_unavailable_reason = labels_unavailable_reason or (
            "" if self.has_clip else "CLIP models not loaded"
        )
        self.pool = ThreadPoolExecutor(max_workers=cpu_threads, thread_name_prefix="seglabel-cpu")
        self._text_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._text_locks: dict[tuple, asyncio.Lock] = {}
        self._upsamplers: OrderedDict[tuple, amg.Upsampler] = OrderedDict()
        self.upsample_on_backend = upsample_on_backend

    def close(self) -> None:
        self.scheduler.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def _cpu(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # ---------------------------------------------------------------------------------------- validation
    def resolve(self, p: SegmentParams) -> SegmentParams:
        """Fill defaults, enforce limits; raises InvalidArgument / LimitExceeded."""
        c = self.cfg
        if p.prompt_type not in ("grid", "points", "box"):
            raise InvalidArgument(f"unknown prompt_type {p.prompt_type!r}")
        pps = p.points_per_side or c.points_per_side
        if pps < 1:
            raise InvalidArgument(f"points_per_side must be positive, got {p.points_per_side}")
        if pps > c.max_points_per_side:
            raise LimitExceeded(f"points_per_side {pps} is over the limit {c.max_points_per_side}")
        if p.prompt_type == "points" and not p.points:
            raise InvalidArgument("prompt_type POINTS needs at least one point")
        if p.prompt_type == "box" and not p.boxes:
            raise InvalidArgument("prompt_type BOX needs at least one box")
        if len(p.points) > c.max_prompts or len(p.boxes) > c.max_prompts:
            raise LimitExceeded(f"at most {c.max_prompts} points and {c.max_prompts} boxes per request")

        def pick(name: str, v: float | None, default: float) -> float:
            if v is None:
                return default
            if not (0.0 <= v <= 1.0):  # also rejects NaN
                raise InvalidArgument(f"{name} must be within [0, 1], got {v}")
            return float(v)

        iou_t = pick("pred_iou_thresh", p.pred_iou_thresh, c.pred_iou_thresh)
        stab_t = pick("stability_score_thresh", p.stability_score_thresh, c.stability_score_thresh)
        nms_t = pick("box_nms_thresh", p.box_nms_thresh, c.box_nms_thresh)
        min_conf = pick("min_confidence", p.min_confidence, 0.0)
        if p.max_masks < 0 or p.top_k < 0:
            raise InvalidArgument("max_masks and top_k must not be negative")
        vocab = tuple(p.vocabulary) or c.vocabulary
        cleaned = tuple(dict.fromkeys(v.strip() for v in vocab))
        if any(not v for v in cleaned):
            raise InvalidArgument("vocabulary entries must not be empty")
        if any(len(v) > c.max_label_chars for v in cleaned):
            raise InvalidArgument(f"vocabulary entries must be at most {c.max_label_chars} characters")
        if len(cleaned) > c.max_vocabulary:
            raise LimitExceeded(f"vocabulary of {len(cleaned)} labels is over the limit {c.max_vocabulary}")
        return SegmentParams(
            prompt_type=p.prompt_type,
            points_per_side=pps,
            points=list(p.points),
            boxes=list(p.boxes),
            max_masks=p.max_masks or c.max_masks,
            vocabulary=cleaned,
            top_k=min(p.top_k or c.top_k, len(cleaned)),
            min_confidence=min_conf,
            return_overlay=p.return_overlay,
            skip_labels=p.skip_labels,
            multimask=p.multimask,
            pred_iou_thresh=iou_t,
            stability_score_thresh=stab_t,
            box_nms_thresh=nms_t,
        )

    def check_prompts_inside(self, p: SegmentParams, w: int, h: int) -> None:
        for x, y, _ in p.points:
            if not (0 <= x <= w and 0 <= y <= h):
                raise InvalidArgument(f"point ({x}, {y}) is outside the {w}x{h} image")
        for x0, y0, x1, y1 in p.boxes:
            if not (x1 > x0 and y1 > y0):
                raise InvalidArgument(f"box ({x0}, {y0}, {x1}, {y1}) must have x1 > x0 and y1 > y0")
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                raise InvalidArgument(f"box ({x0}, {y0}, {x1}, {y1}) is outside the {w}x{h} image")

    # ------------------------------------------------------------------------------------------- prompts
    def prompts(
        self, p: SegmentParams, hw: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(coords [N,P,2] model frame, labels [N,P] int32, grid points [N,2] original pixels or None)."""
        h, w = hw
        size = self.sam["image_size"]
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

    # ------------------------------------------------------------------------------------------ filters
    def select(self, p: SegmentParams, outs: list, grid_points: np.ndarray | None, hw) -> _Candidates:
        """Grid: predicted IoU, stability (low-res), box NMS on low-res boxes, max_masks. Prompts: the
        single mask (or the 3 candidates with ``multimask``), best predicted IoU first."""
        low = self.sam["low_res_size"]
        h, w = hw
        if p.prompt_type != "grid":
            if p.multimask:
                logits = np.concatenate([o.masks.numpy() for o in outs]).reshape(-1, low, low)
                iou = np.concatenate([o.iou[o.kept] for o in outs]).reshape(-1)
                stab = np.concatenate([o.stability for o in outs]).reshape(-1)
            else:
                logits = np.concatenate([o.single_mask.numpy() for o in outs]).reshape(-1, low, low)
                iou = np.concatenate([o.single_iou for o in outs]).reshape(-1)
                stab = amg.stability_score(logits, self.sam["mask_threshold"], self.sam["stability_offset"])
            order = np.argsort(-iou, kind="stable")[: p.max_masks] if p.multimask else np.arange(len(iou))
            return _Candidates(logits[order], iou[order], stab[order], [None] * len(order))
        iou = np.concatenate([o.iou for o in outs])  # [N,3], every prompt
        # Rows: the prompts the decoder kept (best IoU above min_iou), with their masks.
        offsets = np.cumsum([0] + [len(o.iou) for o in outs[:-1]])
        kept = np.concatenate([o.kept + off for o, off in zip(outs, offsets)]).astype(np.int64)
        stab = np.concatenate([o.stability for o in outs])  # [M,3]
        keep = np.ones(stab.shape, bool)
        if p.pred_iou_thresh > 0:
            keep &= iou[kept] > p.pred_iou_thresh
        if p.stability_score_thresh > 0:
            keep &= stab >= p.stability_score_thresh
        row_idx, mask_idx = np.nonzero(keep)
        prompt_idx = kept[row_idx]
        # Fetch only the survivors' logits, chunk by chunk (GPU backends copy just these).
        logits, start = [], 0
        for o in outs:
            m = len(o.kept)
            sel = (row_idx >= start) & (row_idx < start + m)
            if sel.any():
                logits.append(o.masks.take(row_idx[sel] - start, mask_idx[sel]))
            start += m
        logits = np.concatenate(logits) if logits else np.zeros((0, low, low), np.float32)
        bin_low = logits > self.sam["mask_threshold"]
        boxes = amg.masks_to_boxes(bin_low)
        # Low-res inclusive bounds -> original pixels.
        sx, sy = w / low, h / low
        boxes = np.stack(
            [boxes[:, 0] * sx, boxes[:, 1] * sy, (boxes[:, 2] + 1) * sx - 1, (boxes[:, 3] + 1) * sy - 1],
            axis=1,
        )
        scores = iou[prompt_idx, mask_idx]
        nonempty = bin_low.any(axis=(1, 2))
        order = amg.nms(boxes, np.where(nonempty, scores, -np.inf), p.box_nms_thresh)
        order = order[nonempty[order]][: p.max_masks]
        return _Candidates(
            logits[order],
            scores[order],
            stab[row_idx, mask_idx][order],
            [tuple(float(v) for v in grid_points[prompt_idx[i]]) for i in order],
        )

    def _upsampler(self, hw) -> amg.Upsampler:
        key = (self.sam["low_res_size"], hw)
        up = self._upsamplers.get(key)
        if up is None:
            up = self._upsamplers[key] = amg.Upsampler(
                self.sam["low_res_size"], hw, self.sam["mask_threshold"]
            )
            while len(self._upsamplers) > 8:
                self._upsamplers.popitem(last=False)
        return up

    def upsample(self, cand: _Candidates, hw) -> np.ndarray | None:
        """All survivors at once on the backend's device when it offers that, else None (CPU per mask)."""
        if len(cand.logits) and self.upsample_on_backend is not None:
            return self.upsample_on_backend(cand.logits, hw, self.sam["mask_threshold"])
        return None

    def describe_masks(self, cand: _Candidates, idx: range, full_masks: np.ndarray | None, hw) -> list:
        """(MaskResult without index, full-res mask) for survivors ``idx``; empty masks dropped."""
        up = self._upsampler(hw) if full_masks is None else None
        out = []
        for i in idx:
            m = up(cand.logits[i]) if full_masks is None else full_masks[i]
            area = int(m.sum())
            if area == 0:
                continue
            x0, y0, x1, y1 = amg.masks_to_boxes(m[None])[0]
            result = MaskResult(
                index=-1,
                rle=amg.encode_rle(m),
                bbox=(float(x0), float(y0), float(x1 - x0 + 1), float(y1 - y0 + 1)),
                area=area,
                predicted_iou=float(cand.iou[i]),
                stability_score=float(cand.stability[i]),
                point=cand.points[i],
            )
            out.append((result, m))
        return out

    async def finish_masks(self, cand: _Candidates, hw) -> tuple[list[MaskResult], list[np.ndarray]]:
        """Upsample survivors to the original size, drop empty ones, RLE + exact box + area; the
        per-mask work is spread over the CPU pool."""
        full_masks = await self._cpu(self.upsample, cand, hw)
        parts = await asyncio.gather(
            *[
                self._cpu(self.describe_masks, cand, idx, full_masks, hw)
                for idx in self._chunks(len(cand.logits))
            ]
        )
        pairs = [pair for part in parts for pair in part]
        for i, (result, _) in enumerate(pairs):
            result.index = i
        return [r for r, _ in pairs], [m for _, m in pairs]

    def _chunks(self, n: int) -> list[range]:
        k = max(1, min(n, self.pool._max_workers))
        step = -(-n // k) if n else 1
        return [range(i, min(i + step, n)) for i in range(0, n, step)]

    # ------------------------------------------------------------------------------------------ labels
    async def text_embeddings(self, vocab: tuple[str, ...], ctx: RequestContext) -> np.ndarray:
        """[V, D] template-ensembled, L2-normalised label embeddings, cached per vocabulary."""
        cached = self._text_cache.get(vocab)
        if cached is not None:
            self._text_cache.move_to_end(vocab)
            return cached
        lock = self._text_locks.setdefault(vocab, asyncio.Lock())
        async with lock:
            if vocab in self._text_cache:
                return self._text_cache[vocab]
            texts = [t.format(v) for v in vocab for t in self.cfg.templates]
            ids = self.tokenizer(texts)
            step = self.scheduler.max_batch("text")
            parts = await asyncio.gather(
                *[self.scheduler.embed_texts(ids[i : i + step], ctx) for i in range(0, len(ids), step)]
            )
            emb = np.concatenate(parts).reshape(len(vocab), len(self.cfg.templates), -1).mean(axis=1)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            self._text_cache[vocab] = emb.astype(np.float32)
            while len(self._text_cache) > self.cfg.text_cache_size:
                self._text_cache.popitem(last=False)
            self._text_locks.pop(vocab, None)
            return self._text_cache[vocab]

    def classify(
        self,
        image_emb: np.ndarray,
        text_emb: np.ndarray,
        vocab,
        first_index: int,
        top_k: int,
        min_confidence: float,
    ) -> list[LabelResult]:
        logits = self.clip["logit_scale"] * image_emb @ text_emb.T
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        out = []
        for row, pr in enumerate(probs):
            top = np.argsort(-pr, kind="stable")[:top_k]
            best = float(pr[top[0]])
            out.append(
                LabelResult(
                    mask_index=first_index + row,
                    label=vocab[top[0]] if best >= min_confidence else UNKNOWN_LABEL,
                    confidence=best,
                    top_k=[(vocab[j], float(pr[j])) for j in top],
                )
            )
        return out

    def crops(self, image: np.ndarray, masks: list[MaskResult], full: list[np.ndarray]) -> np.ndarray:
        c = self.clip
        return np.stack(
            [
                imaging.clip_crop(
                    image,
                    m_full,
                    m.bbox,
                    c["image_size"],
                    c["mean"],
                    c["std"],
                    self.cfg.crop_context,
                    self.cfg.crop_background_keep,
                )
                for m, m_full in zip(masks, full)
            ]
        )

    async def crops_parallel(
        self, image: np.ndarray, masks: list[MaskResult], full: list[np.ndarray]
    ) -> np.ndarray:
        parts = await asyncio.gather(
            *[
                self._cpu(self.crops, image, masks[r.start : r.stop], full[r.start : r.stop])
                for r in self._chunks(len(masks))
            ]
        )
        return np.concatenate(parts)

    # -------------------------------------------------------------------------------------------- run
    async def run(
        self, params: SegmentParams, image: np.ndarray, ctx: RequestContext, emit: Emit | None = None
    ) -> SegmentResult:
        """The whole request. ``emit`` (streaming) receives Accepted, MasksReady, LabelsUpdate..., Done."""
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        h, w = image.shape[:2]
        p = self.resolve(params)
        self.check_prompts_inside(p, w, h)

        async def send(event):
            if emit is not None:
                await emit(event)

        def mark(stage: str, t0: float) -> float:
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + (now - t0) * 1000.0
            return now

        await send(Accepted(ctx.request_id, w, h))
        t = time.perf_counter()
        x = await self._cpu(
            imaging.sam_preprocess,
            image,
            self.sam["image_size"],
            self.sam["pixel_mean"],
            self.sam["pixel_std"],
        )
        t = mark("decode_image", t)
        feats = await self.scheduler.encode(x, ctx)
        t = mark("encoder", t)
        await send(Progress("encoder", 1.0))

        coords, labels, grid = self.prompts(p, (h, w))
        step = min(self.cfg.points_per_batch, self.scheduler.max_batch("decoder"))
        # sam2's predicted-IoU filter runs inside the decoder: prompts with no candidate above it are
        # never upscaled.
        min_iou = p.pred_iou_thresh if p.prompt_type == "grid" and p.pred_iou_thresh > 0 else -np.inf
        outs = await asyncio.gather(
            *[
                self.scheduler.decode(feats, coords[i : i + step], labels[i : i + step], ctx, min_iou)
                for i in range(0, len(coords), step)
            ]
        )
        del feats
        t = mark("decoder", t)
        await send(Progress("decoder", 1.0))
        ctx.check()
        cand = await self._cpu(self.select, p, outs, grid, (h, w))
        del outs
        t = mark("filter", t)
        masks, full = await self.finish_masks(cand, (h, w))
        t = mark("upsample", t)
        await send(MasksReady(masks))

        labels_out: list[LabelResult] = []
        reason = ""
        if p.skip_labels:
            reason = "labels skipped at the client's request (skip_labels)"
        elif not self.has_clip:
            reason = self.labels_unavailable_reason
        elif masks:
            ctx.check()
            text = await self.text_embeddings(p.vocabulary, ctx)
            t = mark("clip", t)
            step = self.cfg.clip_batch
            for i in range(0, len(masks), step):
                pix = await self.crops_parallel(image, masks[i : i + step], full[i : i + step])
                t = mark("crops", t)
                emb = await self.scheduler.embed_images(pix, ctx)
                chunk = self.classify(emb, text, p.vocabulary, i, p.top_k, p.min_confidence)
                labels_out += chunk
                t = mark("clip", t)
                await send(LabelsUpdate(chunk, len(labels_out), len(masks)))
        overlay = b""
        if p.return_overlay:
            captions = [""] * len(masks)
            for lab in labels_out:
                captions[lab.mask_index] = f"{lab.label} {lab.confidence:.2f}"
            overlay = await self._cpu(imaging.render_overlay, image, full, captions)
            t = mark("render", t)
        timings["queue"] = ctx.queue_ms
        timings["total"] = (time.perf_counter() - t_start) * 1000.0
        result = SegmentResult(
            width=w,
            height=h,
            masks=masks,
            labels=labels_out,
            overlay_png=overlay,
            timings=timings,
            labels_unavailable_reason=reason,
        )
        await send(Done(result))
        return result
