"""What runs for a request: prompts -> encoder -> decoder batches -> filters on low-res logits ->
upsample survivors -> RLE -> CLIP crops -> labels -> overlay.

``validation`` checks and completes the parameters, ``masks`` turns decoder outputs into mask
results, ``labels`` classifies them; :meth:`Pipeline.run` orchestrates. Model calls go through the
scheduler (``await scheduler.run(stage, payload, ctx)``); numpy work runs in a small thread pool so
the asyncio loop stays free.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from seglabel_server import imaging
from seglabel_server.kinds.sam2 import DecodeRequest
from seglabel_server.pipeline import masks as mask_ops
from seglabel_server.pipeline.config import PipelineConfig
from seglabel_server.pipeline.labels import Labeller
from seglabel_server.pipeline.validation import check_prompts_inside, resolve
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

Emit = Callable[[object], Awaitable[None]]

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
    ):
        self.cfg = cfg
        self.sam = sam2_meta
        self.scheduler = scheduler
        self.pool = ThreadPoolExecutor(max_workers=cpu_threads, thread_name_prefix="seglabel-cpu")
        self.finisher = mask_ops.MaskFinisher(sam2_meta, upsample_on_backend)
        has_clip = tokenizer is not None and clip_meta is not None and not labels_unavailable_reason
        self.labels = Labeller(cfg, clip_meta, scheduler, tokenizer, self._parallel) if has_clip else None
        self.labels_unavailable_reason = (
            "" if has_clip else (labels_unavailable_reason or "CLIP models not loaded")
        )

    @property
    def has_clip(self) -> bool:
        return self.labels is not None

    def close(self) -> None:
        self.scheduler.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

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
        self, cand: mask_ops.MaskData, hw, ctx: RequestContext | None = None
    ) -> tuple[list[MaskResult], list[np.ndarray]]:
        """Upsample survivors to the original size, drop empty ones, RLE + exact box + area; the
        per-mask work is spread over the CPU pool and stops once ``ctx`` is done."""
        full_masks = await self._cpu(self.finisher.upsample, cand, hw)
        parts = await self._parallel(
            lambda r: self.finisher.describe(cand, r, full_masks, hw, ctx), len(cand)
        )
        pairs = [pair for part in parts for pair in part]
        for i, (result, _) in enumerate(pairs):
            result.index = i
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
                "decoder", DecodeRequest(feats, coords[i : i + step], labels[i : i + step], min_iou), ctx
            )
            done += 1
            await send(Progress("decoder", done / len(starts)))
            return out

        return await asyncio.gather(*[chunk(i) for i in starts]), grid

    async def _label(self, p, image, masks, full, ctx, send, mark) -> list[LabelResult]:
        out: list[LabelResult] = []
        text = await self.labels.text_embeddings(p.vocabulary, ctx)
        mark("clip")
        step = self.scheduler.max_batch("clip")
        for i in range(0, len(masks), step):
            pix = await self.labels.crops_parallel(image, masks[i : i + step], full[i : i + step], ctx)
            mark("crops")
            emb = await self.scheduler.run("clip", pix, ctx)
            chunk = self.labels.classify(emb, text, p.vocabulary, i, p.top_k, p.min_confidence)
            out += chunk
            mark("clip")
            await send(LabelsUpdate(chunk, len(out), len(masks)))
        return out

    async def run(
        self, params: SegmentParams, image: np.ndarray, ctx: RequestContext, emit: Emit | None = None
    ) -> SegmentResult:
        """The whole request. ``emit`` (streaming) receives the events in the order the proto's
        ``SegmentEvent`` documents."""
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
        last[0] = time.perf_counter()
        x = await self._cpu(
            imaging.sam_preprocess,
            image,
            self.sam["image_size"],
            self.sam["pixel_mean"],
            self.sam["pixel_std"],
        )
        mark("decode_image")
        feats = await self.scheduler.run("encoder", x, ctx)
        mark("encoder")
        await send(Progress("encoder", 1.0))
        outs, grid = await self._decode(p, feats, (h, w), ctx, send)
        del feats
        mark("decoder")
        ctx.check()
        cand = await self._cpu(mask_ops.select, p, outs, grid, (h, w), self.sam)
        del outs
        mark("filter")
        masks, full = await self.finish_masks(cand, (h, w), ctx)
        mark("upsample")
        await send(MasksReady(masks))

        labels_out: list[LabelResult] = []
        reason, labels_missing = "", False
        if p.skip_labels:
            reason = "labels skipped at the client's request (skip_labels)"
        elif not self.has_clip:
            reason, labels_missing = self.labels_unavailable_reason, True
        elif masks:
            ctx.check()
            labels_out = await self._label(p, image, masks, full, ctx, send, mark)
        overlay = b""
        if p.return_overlay:
            captions = [""] * len(masks)
            for lab in labels_out:
                captions[lab.mask_index] = f"{lab.label} {lab.confidence:.2f}"
            overlay = await self._cpu(imaging.render_overlay, image, full, captions, 0.45, ctx.check)
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
            complete=not labels_missing,
        )
        await send(Done(result))
        return result
