"""The pipeline: what runs for a request, as a sequence of named steps over one request's state."""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from seglabel_server.amg import MaskData
from seglabel_server.models import images
from seglabel_server.models.kinds.sam2 import DecodeRequest, ImageFeatures
from seglabel_server.pipeline import masks as mask_ops
from seglabel_server.pipeline import render
from seglabel_server.pipeline.config import PipelineConfig
from seglabel_server.pipeline.cpu import CpuPool
from seglabel_server.pipeline.labels import Labeller
from seglabel_server.pipeline.mask_path import CropSpec, mask_path
from seglabel_server.pipeline.parts import Emit, PipelineParts, RequestState
from seglabel_server.pipeline.scene import SceneExtras
from seglabel_server.pipeline.scoring import Scorer
from seglabel_server.types import (
    Accepted,
    Answer,
    DepthResult,
    Done,
    LabelResult,
    LabelsUpdate,
    MaskResult,
    MasksReady,
    Progress,
    RequestContext,
    SegmentJob,
    SegmentResult,
    TextOptions,
    TextResult,
)

MASK_CHUNK = 64  # masks per stream event when no labels are computed
# A request's decoder calls queued or running at once: one runs while the next waits, and the
# outputs of a call are filtered while the next runs. More only holds more outputs in memory.
DECODER_WINDOW = 2


class Pipeline:
    """Prompts -> encoder -> decoder batches -> filters on low-res logits -> upsample survivors -> RLE
    -> CLIP crops -> labels -> overlay, with depth and OCR alongside when the job asks for them.
    Model calls go through the scheduler; host work runs in the CPU pool."""

    def __init__(self, cfg: PipelineConfig, parts: PipelineParts, cpu_threads: int = 2, ocr_threads: int = 4):
        self.cfg = cfg
        self.parts = parts
        self.sam = parts.sam
        self.scheduler = parts.scheduler
        self.pool = CpuPool(cpu_threads)
        # OCR threads wait on the scheduler between rapidocr's steps: a pool of their own, so that
        # they never hold the CPU threads of the mask pipeline.
        self.ocr_pool = CpuPool(ocr_threads, "seglabel-ocr")
        self.crop = CropSpec.of(parts.clip, cfg) if parts.clip is not None else None
        self.mask_path = mask_path(
            parts.sam, self.pool, self.crop, parts.device_ops, parts.upsample_on_backend
        )
        self.labels = (
            Labeller(cfg, parts.clip, parts.scheduler, parts.tokenizer)
            if parts.clip is not None and parts.tokenizer is not None
            else None
        )

    def close(self) -> None:
        self.scheduler.close()
        self.pool.close()
        self.ocr_pool.close()

    # -- depth and text ---------------------------------------------------------------------------
    async def estimate_depth(self, image: np.ndarray, ctx: RequestContext) -> DepthResult:
        """Relative inverse depth at the image's size, its range and a coloured PNG."""
        d = self.parts.depth
        x = await self.pool.run(images.depth_preprocess, image, d["image_size"], d["mean"], d["std"])
        out = await self.scheduler.run("depth", x, ctx)
        h, w = image.shape[:2]

        def finish() -> DepthResult:
            codes, lo, hi, values = render.quantize16(render.resize_map(out, w, h))
            return DepthResult(codes, values, lo, hi, render.colorize(values, lo, hi))

        return await self.pool.run(finish)

    async def extract_text(self, image: np.ndarray, ctx: RequestContext, options: TextOptions) -> TextResult:
        """Text lines; ``options`` resolved (thresholds set)."""
        lines = await self.ocr_pool.run(
            self.parts.ocr.read, image, ctx, options.box_thresh, options.min_confidence
        )
        return TextResult(lines)

    async def warm_up(self, vocabulary: tuple[str, ...], image: np.ndarray, ctx: RequestContext) -> None:
        """What a first request would otherwise pay for, beyond one segmentation: the default
        vocabulary's text embeddings, a CLIP batch, depth and OCR."""
        if self.labels is not None:
            await self.labels.text_embeddings(tuple((v, ()) for v in vocabulary), ctx)
            s = self.parts.clip["image_size"]
            await self.scheduler.run("clip", np.zeros((1, 3, s, s), np.float32), ctx)
        if self.parts.depth is not None:
            await self.estimate_depth(image, ctx)
        if self.parts.ocr is not None:
            await self.extract_text(
                image, ctx, TextOptions(self.cfg.text_box_thresh, self.cfg.text_min_confidence)
            )

    # -- a Segment request ------------------------------------------------------------------------
    async def run(
        self,
        job: SegmentJob,
        image: np.ndarray,
        ctx: RequestContext,
        emit: Emit | None = None,
        image_key: str | None = None,
    ) -> SegmentResult:
        """The whole request. ``emit`` (streaming) receives the events in the order the proto's
        ``SegmentEvent`` documents. ``image_key`` (the sha256 of the image's bytes) finds and keeps
        the image's embedding in the cache."""
        req = RequestState(job, image, ctx, emit)
        await req.send(Accepted(ctx.request_id, image.shape[1], image.shape[0]))
        scene = SceneExtras(image, self.pool, req.clock.timings)
        try:
            req.clock.last = time.perf_counter()
            feats = await self._encode(req, image_key, scene)
            cand = await self._candidates(req, feats)
            del feats
            masks, labels, kept_full = await self._masks_and_labels(req, cand, scene)
            del cand
            depth, mask_depth, text, mask_text = await scene.finish(masks, req.send, ctx)
            overlay = await self._render(req, masks, labels, kept_full)
            req.clock.timings["queue"] = ctx.queue_ms
            req.clock.timings["total"] = req.clock.total()
            result = SegmentResult(
                width=image.shape[1],
                height=image.shape[0],
                masks=masks,
                labels=labels,
                overlay_png=overlay,
                timings=req.clock.timings,
                labels_unavailable_reason=job.notes.get("labels", ""),
                complete=job.complete,
                depth=depth,
                mask_depth=mask_depth,
                text=text,
                mask_text=mask_text,
                depth_unavailable_reason=job.notes.get("depth", ""),
                text_unavailable_reason=job.notes.get("text", ""),
                label_mode=job.labelling.mode if job.labelling else "single",
            )
            if req.embeddings and image_key:
                # kept before the answer goes out: a Relabel right after it finds it
                chunks = [len(e) for e in req.embeddings]
                answer = Answer(np.concatenate(req.embeddings), image_key, [m.rle for m in masks],
                                self.parts.clip_model, chunks)  # fmt: skip
                await self.parts.answers.put_async(ctx.request_id, answer)
                result.request_id = ctx.request_id
            await req.send(Done(result))
            return result
        finally:
            await scene.cancel()

    async def _encode(self, req: RequestState, image_key: str | None, scene: SceneExtras) -> ImageFeatures:
        """The image's features: from the embedding cache, or one encoder call (cached after). Depth
        and OCR start once the encoder call is queued."""
        p, ctx = req.job.params, req.ctx
        cache = self.parts.embeddings if image_key else None
        feats = cache.get(image_key) if cache is not None else None

        def start_scene() -> None:
            scene.start(
                self.estimate_depth(req.image, ctx) if req.job.depth else None,
                self.extract_text(req.image, ctx, TextOptions(p.text_box_thresh, p.text_min_confidence))
                if req.job.text
                else None,
            )

        if feats is None:
            x = await self.mask_path.encoder_input(req)
            req.clock.mark("decode_image")
            encoded = self.scheduler.submit("encoder", x, ctx)  # queued before the scene's work
            start_scene()
            feats = await self.scheduler.wait(encoded)
            if cache is not None:
                cache.put(image_key, feats)
        else:
            start_scene()
        req.clock.mark("encoder")
        await req.send(Progress("encoder", 1.0))
        return feats

    async def _candidates(self, req: RequestState, feats: ImageFeatures) -> MaskData:
        """Decoder calls over the prompts, in chunks of the decoder's batch size, at most
        ``DECODER_WINDOW`` of them queued or running at once; each call's output is filtered as it
        returns (a grid's :class:`masks.CandidateSet`), so the request holds the candidates that
        can still be in the answer and a window of outputs, never every prompt's masks."""
        p, ctx = req.job.params, req.ctx
        coords, labels, grid = mask_ops.prompts(p, req.hw, self.sam["image_size"])
        step = self.scheduler.max_batch("decoder")
        # sam2's predicted-IoU filter runs inside the decoder: prompts with no candidate above it are
        # never upscaled.
        min_iou = p.pred_iou_thresh if p.prompt_type == "grid" and p.pred_iou_thresh > 0 else -np.inf
        cands = (
            mask_ops.CandidateSet(p, grid, req.hw, self.sam, self.mask_path.logits)
            if grid is not None
            else None
        )
        outs: list = []  # point / box prompts: few outputs, kept whole
        starts = range(0, len(coords), step)
        pending: deque = deque()
        done = 0

        async def collect(start: int, fut) -> None:
            nonlocal done
            out = await self.scheduler.wait(fut)
            if cands is not None:
                await self.pool.run(cands.add, out, start)
            else:
                outs.append(out)
            done += 1
            await req.send(Progress("decoder", done / len(starts)))

        try:
            for i in starts:
                call = DecodeRequest(
                    feats, coords[i : i + step], labels[i : i + step], min_iou, self.parts.multi_image
                )
                pending.append((i, self.scheduler.submit("decoder", call, ctx)))
                if len(pending) >= DECODER_WINDOW:
                    await collect(*pending.popleft())
            while pending:
                await collect(*pending.popleft())
        finally:
            for _, fut in pending:  # an error or a cancellation: the calls still queued never run
                fut.cancel()
        req.clock.mark("decoder")
        ctx.check()
        cand = (
            await self.pool.run(cands.result) if cands is not None else await self.mask_path.prompted(p, outs)
        )
        req.clock.mark("filter")
        return cand

    async def _masks_and_labels(
        self, req: RequestState, cand: MaskData, scene: SceneExtras
    ) -> tuple[list[MaskResult], list[LabelResult], list[np.ndarray]]:
        """Masks go out, and are labelled, a chunk at a time: a full-resolution mask is dropped once
        its crop is cut (kept only for the overlay), so memory follows the chunk, not the answer.
        Returns (masks, labels, full masks kept for the overlay where the path hands them out)."""
        ctx, p = req.ctx, req.job.params
        scorer = None
        if req.job.labels and len(cand):
            ctx.check()
            scorer = await self.labels.scorer(req.job.labelling, ctx)
            req.clock.mark("clip")
        step = self.scheduler.max_batch("clip") if scorer is not None else MASK_CHUNK
        masks: list[MaskResult] = []
        labels: list[LabelResult] = []
        kept_full: list[np.ndarray] = []
        for start in range(0, len(cand), step):
            idx = range(start, min(start + step, len(cand)))
            chunk, full = await self.finish_masks(cand, req.hw, ctx, idx)
            for r in chunk:
                r.index = len(masks)
                masks.append(r)
            req.clock.mark("upsample")
            if not chunk:
                continue
            await req.send(MasksReady(chunk))
            if scorer is not None:
                labelled = await self._label_chunk(req, chunk, full, scorer)
                labels += labelled
                # total: masks labelled so far + candidates still to come (exact on the last update)
                await req.send(LabelsUpdate(labelled, len(labels), len(masks) + len(cand) - idx.stop))
            host = self.mask_path.host_masks(full)  # [] on the device: joins and overlay decode the RLEs
            await scene.add_chunk(chunk, host, ctx)
            if p.return_overlay:
                kept_full += host
        if not masks:
            await req.send(MasksReady([]))
        return masks, labels, kept_full

    async def finish_masks(self, cand: MaskData, hw, ctx: RequestContext, idx: range | None = None):
        """Survivors ``idx`` (default: all) upsampled to the original size, empty ones dropped, RLE +
        exact box + area (the mask path's :meth:`~mask_path.MaskPath.finish`); stops once ``ctx`` is
        done. Indices are left to the caller. Returns (MaskResults, their full masks)."""
        idx = range(len(cand)) if idx is None else idx
        # (off the event loop: slicing the logits gathers the chunk's rows into one array)
        sub = await self.pool.run(
            lambda: MaskData(
                **{k: cand[k][idx.start : idx.stop] for k in ("logits", "iou", "stability", "point")}
            )
        )
        return await self.mask_path.finish(sub, hw, ctx)

    async def _label_chunk(
        self, req: RequestState, chunk: list[MaskResult], full: list, scorer: Scorer
    ) -> list[LabelResult]:
        """CLIP labels of one chunk of masks: their crops (the mask path's), one CLIP call, scores
        against the vocabulary (``scorer``); the crop embeddings are kept in ``req.embeddings`` for
        the answer cache."""
        pix = await self.mask_path.crops(req, chunk, full, req.ctx)
        req.clock.mark("crops")
        emb = np.asarray(await self.scheduler.run("clip", pix, req.ctx), np.float32)
        if self.parts.answers is not None:  # kept for Relabel
            req.embeddings.append(emb)
        spec = req.job.labelling
        out = scorer.classify(emb, chunk[0].index, spec.top_k, spec.min_confidence)
        req.clock.mark("clip")
        return out

    async def embed_regions(self, image: np.ndarray, regions: list, ctx: RequestContext) -> np.ndarray:
        """[N, D] CLIP image embeddings of ``regions`` of ``image``: (full-size bool mask or None,
        (x, y, w, h) box) each, cut exactly as a mask's crop for labelling (host path)."""
        pix = await self.pool.run(
            lambda: np.stack([self.crop.cut(image, mask, box) for mask, box in regions])
        )
        step = self.scheduler.max_batch("clip")
        parts = [await self.scheduler.run("clip", pix[i : i + step], ctx) for i in range(0, len(pix), step)]
        return np.concatenate(parts).astype(np.float32)

    async def _render(
        self, req: RequestState, masks: list[MaskResult], labels: list[LabelResult], kept_full: list
    ) -> bytes:
        """The overlay PNG when asked for (the mask path's full masks on the host)."""
        if not req.job.params.return_overlay:
            return b""
        captions = [""] * len(masks)
        for lab in labels:
            captions[lab.mask_index] = f"{lab.label} {lab.confidence:.2f}"
        kept_full = await self.mask_path.overlay_masks(masks, kept_full)
        overlay = await self.pool.run(
            render.render_overlay, req.image, kept_full, captions, 0.45, req.ctx.check
        )
        req.clock.mark("render")
        return overlay
