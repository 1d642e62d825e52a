"""What runs for a request: prompts -> encoder -> decoder batches -> filters on low-res logits ->
upsample survivors -> RLE -> CLIP crops -> labels -> overlay; with_depth / with_text: the depth
model and OCR alongside, from the same decoded image, joined with the masks (``scene``).

``validation`` checks and completes the parameters, ``masks`` turns decoder outputs into mask
results, ``labels`` classifies them; :meth:`Pipeline.run` orchestrates. When the backend offers
device twins of the per-mask work (``Backend.device_ops``: the torch backend), the image is
uploaded once and resized there, and filters, upsampling, RLE runs and CLIP crops run in the
backend's memory: no full-size mask reaches the host (the overlay and the depth/text joins decode
the RLE answers instead). Model calls go through the
scheduler (``await scheduler.run(stage, payload, ctx)``); numpy work runs in a small thread pool so
the asyncio loop stays free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from seglabel_server import amg, imaging
from seglabel_server.embedding_cache import EmbeddingCache
from seglabel_server.errors import CapabilityUnavailable
from seglabel_server.kinds.sam2 import DecodeRequest
from seglabel_server.pipeline import masks as mask_ops
from seglabel_server.pipeline import scene
from seglabel_server.pipeline.config import PipelineConfig
from seglabel_server.pipeline.labels import Labeller
from seglabel_server.pipeline.validation import check_prompts_inside, resolve, resolve_text
from seglabel_server.tokenizer import ClipTokenizer
from seglabel_server.types import (
    Accepted,
    DepthResult,
    Done,
    LabelResult,
    LabelsUpdate,
    MaskResult,
    MasksReady,
    Progress,
    RequestContext,
    SegmentParams,
    SegmentResult,
    TextOptions,
    TextResult,
)

Emit = Callable[[object], Awaitable[None]]
MASK_CHUNK = 64  # masks per stream event when no labels are computed

__all__ = ["Pipeline", "PipelineConfig"]


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
        depth_meta: dict | None = None,
        depth_unavailable_reason: str = "",
        ocr_engine=None,
        text_unavailable_reason: str = "",
        ocr_threads: int = 4,
        embeddings: EmbeddingCache | None = None,
        device_ops=None,
        multi_image: bool = False,
    ):
        self.cfg = cfg
        self.device_ops = device_ops
        self.multi_image = multi_image
        self.embeddings = embeddings
        self.sam = sam2_meta
        self.scheduler = scheduler
        self.pool = ThreadPoolExecutor(max_workers=cpu_threads, thread_name_prefix="seglabel-cpu")
        self.finisher = mask_ops.MaskFinisher(sam2_meta, upsample_on_backend)
        has_clip = tokenizer is not None and clip_meta is not None and not labels_unavailable_reason
        self.labels = Labeller(cfg, clip_meta, scheduler, tokenizer, self._parallel) if has_clip else None
        self.labels_unavailable_reason = (
            "" if has_clip else (labels_unavailable_reason or "CLIP models not loaded")
        )
        self.depth_meta = depth_meta if not depth_unavailable_reason else None
        self.depth_unavailable_reason = (
            "" if self.depth_meta else (depth_unavailable_reason or "no depth model loaded")
        )
        self.ocr = ocr_engine if not text_unavailable_reason else None
        self.text_unavailable_reason = "" if self.ocr else (text_unavailable_reason or "no OCR models loaded")
        # OCR threads wait on the scheduler between rapidocr's steps: a pool of their own, so that
        # they never hold the CPU threads of the mask pipeline.
        self.ocr_pool = ThreadPoolExecutor(max_workers=ocr_threads, thread_name_prefix="seglabel-ocr")

    @property
    def has_clip(self) -> bool:
        return self.labels is not None

    def close(self) -> None:
        self.scheduler.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.ocr_pool.shutdown(wait=False, cancel_futures=True)

    # -- depth and text ---------------------------------------------------------------------------
    async def estimate_depth(self, image: np.ndarray, ctx: RequestContext) -> DepthResult:
        """Relative inverse depth at the image's size, its range and a coloured PNG."""
        if self.depth_meta is None:
            raise CapabilityUnavailable(
                f"depth is not available on this server: {self.depth_unavailable_reason}"
            )
        d = self.depth_meta
        x = await self._cpu(imaging.depth_preprocess, image, d["image_size"], d["mean"], d["std"])
        out = await self.scheduler.run("depth", x, ctx)
        h, w = image.shape[:2]

        def finish() -> DepthResult:
            codes, lo, hi, values = imaging.quantize16(imaging.resize_map(out, w, h))
            return DepthResult(codes, values, lo, hi, imaging.colorize(values, lo, hi))

        return await self._cpu(finish)

    async def extract_text(
        self, image: np.ndarray, ctx: RequestContext, options: TextOptions | None = None
    ) -> TextResult:
        if self.ocr is None:
            raise CapabilityUnavailable(
                f"text extraction is not available on this server: {self.text_unavailable_reason}"
            )
        opts = resolve_text(self.cfg, options)
        box, score = opts.box_thresh, opts.min_confidence
        lines = await asyncio.get_running_loop().run_in_executor(
            self.ocr_pool, self.ocr.read, image, ctx, box, score
        )
        return TextResult(lines)

    async def _cpu(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def _chunks(self, n: int) -> list[range]:
        k = max(1, min(n, self.pool._max_workers))
        step = -(-n // k) if n else 1
        return [range(i, min(i + step, n)) for i in range(0, n, step)]

    async def _parallel(self, fn: Callable[[range], object], n: int) -> list:
        """``fn`` over contiguous chunks of ``range(n)``, one chunk per pool thread, in order."""
        return await asyncio.gather(*[self._cpu(fn, r) for r in self._chunks(n)])

    def resolve(self, p: SegmentParams) -> SegmentParams:
        return resolve(self.cfg, p)

    async def finish_masks(
        self, cand: mask_ops.MaskData, hw, ctx: RequestContext | None = None, idx: range | None = None
    ) -> tuple[list[MaskResult], list[np.ndarray]]:
        """Survivors ``idx`` (default: all) upsampled to the original size, empty ones dropped, RLE +
        exact box + area; the per-mask work is spread over the CPU pool and stops once ``ctx`` is
        done. Indices are left to the caller."""
        idx = range(len(cand)) if idx is None else idx
        sub = mask_ops.MaskData(
            **{k: cand[k][idx.start : idx.stop] for k in ("logits", "iou", "stability", "point")}
        )
        if self.device_ops is not None:  # full masks stay on the device
            if ctx is not None:
                ctx.check()
            return await self._cpu(self.device_ops.finish, sub, hw, self.sam["mask_threshold"])
        full_masks = await self._cpu(self.finisher.upsample, sub, hw)
        parts = await self._parallel(lambda r: self.finisher.describe(sub, r, full_masks, hw, ctx), len(sub))
        pairs = [pair for part in parts for pair in part]
        return [r for r, _ in pairs], [m for _, m in pairs]

    async def _decode(self, p: SegmentParams, feats, hw, ctx: RequestContext, send) -> tuple[list, object]:
        coords, labels, grid = mask_ops.prompts(p, hw, self.sam["image_size"])
        step = self.scheduler.max_batch("decoder")
        # sam2's predicted-IoU filter runs inside the decoder: prompts with no candidate above it are
        # never upscaled.
        min_iou = p.pred_iou_thresh if p.prompt_type == "grid" and p.pred_iou_thresh > 0 else -np.inf
        starts = range(0, len(coords), step)
        done = 0

        async def chunk(i: int):
            nonlocal done
            out = await self.scheduler.run(
                "decoder",
                DecodeRequest(feats, coords[i : i + step], labels[i : i + step], min_iou, self.multi_image),
                ctx,
            )
            done += 1
            await send(Progress("decoder", done / len(starts)))
            return out

        return await asyncio.gather(*[chunk(i) for i in starts]), grid

    async def _label_chunk(self, p, image, masks, full, text, first: int, ctx, mark) -> list[LabelResult]:
        if self.device_ops is not None:  # image: the uploaded copy, full: device masks
            pix = await self._cpu(self.labels.crops_on_device, self.device_ops, image, masks, full)
        else:
            pix = await self.labels.crops_parallel(image, masks, full, ctx)
        mark("crops")
        emb = await self.scheduler.run("clip", pix, ctx)
        out = self.labels.classify(emb, text, p.vocabulary, first, p.top_k, p.min_confidence)
        mark("clip")
        return out

    async def run(
        self,
        params: SegmentParams,
        image: np.ndarray,
        ctx: RequestContext,
        emit: Emit | None = None,
        image_key: str | None = None,
    ) -> SegmentResult:
        """The whole request. ``emit`` (streaming) receives the events in the order the proto's
        ``SegmentEvent`` documents. ``image_key`` (the sha256 of the image's bytes) finds and keeps
        the image's embedding in the cache."""
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        h, w = image.shape[:2]
        p = self.resolve(params)
        check_prompts_inside(p, w, h)
        last = [time.perf_counter()]

        async def send(event):
            if emit is not None:
                await emit(event)

        def mark(stage: str) -> None:
            now = time.perf_counter()
            timings[stage] = timings.get(stage, 0.0) + (now - last[0]) * 1000.0
            last[0] = now

        await send(Accepted(ctx.request_id, w, h))
        extras = scene.SceneExtras(self, p, image, timings)
        try:
            last[0] = time.perf_counter()
            cache = self.embeddings if image_key else None
            feats = cache.get(image_key) if cache is not None else None
            dops = self.device_ops
            image_dev = None

            async def on_device():
                """The image in the backend's memory, uploaded once (for the encoder or the crops)."""
                nonlocal image_dev
                if image_dev is None:
                    image_dev = await self._cpu(dops.upload, image)
                return image_dev

            if feats is None:
                s, mean, std = self.sam["image_size"], self.sam["pixel_mean"], self.sam["pixel_std"]
                if dops is not None:
                    x = await self._cpu(dops.sam_preprocess, await on_device(), s, mean, std)
                else:
                    x = await self._cpu(imaging.sam_preprocess, image, s, mean, std)
                mark("decode_image")
                encoded = self.scheduler.enqueue("encoder", x, ctx)
                extras.start(ctx)
                feats = await encoded
                if cache is not None:
                    cache.put(image_key, feats)
            else:
                extras.start(ctx)
            mark("encoder")
            await send(Progress("encoder", 1.0))
            outs, grid = await self._decode(p, feats, (h, w), ctx, send)
            del feats
            mark("decoder")
            ctx.check()
            select = dops.select if dops is not None else mask_ops.select
            cand = await self._cpu(select, p, outs, grid, (h, w), self.sam)
            del outs
            mark("filter")
            # Masks go out, and are labelled, a chunk at a time: a full-resolution mask is dropped once
            # its crop is cut (kept only for the overlay), so memory follows the chunk, not the answer.
            reason, labels_missing, text = "", False, None
            if p.skip_labels:
                reason = "labels skipped at the client's request (skip_labels)"
            elif not self.has_clip:
                reason, labels_missing = self.labels_unavailable_reason, True
            elif len(cand):
                ctx.check()
                text = await self.labels.text_embeddings(p.vocabulary, ctx)
                mark("clip")
            step = self.scheduler.max_batch("clip") if text is not None else MASK_CHUNK
            masks: list[MaskResult] = []
            labels_out: list[LabelResult] = []
            kept_full: list[np.ndarray] = []
            for start in range(0, len(cand), step):
                idx = range(start, min(start + step, len(cand)))
                chunk, full = await self.finish_masks(cand, (h, w), ctx, idx)
                for r in chunk:
                    r.index = len(masks)
                    masks.append(r)
                mark("upsample")
                if not chunk:
                    continue
                await send(MasksReady(chunk))
                if text is not None:
                    src = await on_device() if dops is not None else image
                    labelled = await self._label_chunk(p, src, chunk, full, text, chunk[0].index, ctx, mark)
                    labels_out += labelled
                    # total: masks labelled so far + candidates still to come (exact on the last update)
                    await send(LabelsUpdate(labelled, len(labels_out), len(masks) + len(cand) - idx.stop))
                if dops is None:  # device masks: depth/text joins and the overlay decode the RLEs
                    await extras.add_chunk(chunk, full, ctx)
                    if p.return_overlay:
                        kept_full += full
            if not masks:
                await send(MasksReady([]))
            del cand
            depth, mask_depth, text, mask_text = await extras.finish(masks, send, ctx)
            overlay = b""
            if p.return_overlay:
                captions = [""] * len(masks)
                for lab in labels_out:
                    captions[lab.mask_index] = f"{lab.label} {lab.confidence:.2f}"
                if dops is not None:
                    kept_full = await self._cpu(lambda: [amg.decode_rle(m.rle) for m in masks])
                overlay = await self._cpu(imaging.render_overlay, image, kept_full, captions, 0.45, ctx.check)
                mark("render")
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
                complete=not labels_missing and extras.complete,
                depth=depth,
                mask_depth=mask_depth,
                text=text,
                mask_text=mask_text,
                depth_unavailable_reason=extras.depth_reason,
                text_unavailable_reason=extras.text_reason,
            )
            await send(Done(result))
            return result
        finally:
            await extras.cancel()
