"""The domain service behind every transport: each request resolved and checked once, admitted,
then run on the pipeline. Its parts each do one job: :class:`Lifecycle` (loading, readiness, memory
given back while idle, drain), :class:`Admission` (the in-flight limit and the memory budget) and
:class:`ImageSource` (a request's image: read, checked, decoded once, cached). Raises typed errors;
knows nothing of protobuf or HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import AsyncGenerator

from seglabel_api import options

from seglabel_server import __version__
from seglabel_server.errors import FailedPrecondition, NotFound, clip_text
from seglabel_server.metrics import Metrics
from seglabel_server.pipeline.pipeline import DECODER_WINDOW
from seglabel_server.pipeline.scoring import DEFAULT_MULTI_THRESHOLD
from seglabel_server.scheduler.batching import DEFAULT
from seglabel_server.service.admission import Admission
from seglabel_server.service.budget import (
    MemoryBudget,
    depth_bytes,
    machine_memory_bytes,
    request_bytes,
    text_bytes,
)
from seglabel_server.service.capabilities import Capabilities
from seglabel_server.service.config import ServerConfig
from seglabel_server.service.image_source import ImageSource
from seglabel_server.service.lifecycle import Lifecycle
from seglabel_server.service.params import (
    check_prompts_inside,
    plan_segment,
    priority_of,
    resolve_relabel,
    resolve_text,
)
from seglabel_server.service.tracking import Tracking
from seglabel_server.service.vocabularies import Vocabularies
from seglabel_server.storage import uploads
from seglabel_server.storage.vocabularies import open_vocabularies
from seglabel_server.types import Done, RequestContext, SegmentJob, SegmentOptions, SegmentResult, TextOptions


class SeglabelService:
    def __init__(self, cfg: ServerConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        # who answers: the Ray Serve replica sets its replica id here
        self.served_by = f"{socket.gethostname()}:{os.getpid()}"
        files = uploads.open_store(cfg.upload_store, cfg.upload_cache_mb << 20, cfg.upload_ttl_s)
        self.images = ImageSource(files, cfg.max_image_bytes, cfg.max_image_pixels)
        limit = cfg.max_memory_mb << 20 if cfg.max_memory_mb else machine_memory_bytes() // 2
        self.admission = Admission(
            cfg.max_inflight, MemoryBudget(limit), self.metrics, cfg.interactive_reserve
        )
        self.lifecycle = Lifecycle(cfg, self.metrics, self.admission, self.images)
        store = open_vocabularies(cfg.vocabulary_store or cfg.upload_store)
        self.vocabularies = Vocabularies(store, cfg, self.lifecycle, self.admission, self.images)
        self.tracking = Tracking(
            cfg, self.lifecycle, self.admission, self.images, self.vocabularies, self.metrics
        )

    # -- life: the lifecycle's -------------------------------------------------------------------
    @property
    def capabilities(self) -> Capabilities:
        return self.lifecycle.capabilities

    @property
    def serving(self) -> bool:
        """Models loaded and warm, not draining (health: SERVING)."""
        return self.lifecycle.serving

    async def load(self) -> None:
        await self.lifecycle.load(self.cfg.upload_store if self.images.files.shared else "")

    def drain(self) -> None:
        self.lifecycle.drain()

    async def close(self) -> None:
        await self.lifecycle.close()
        self.images.files.close()
        self.vocabularies.store.close()

    # -- calls -----------------------------------------------------------------------------------
    def upload(self, data: bytes, filename: str = "") -> tuple[str, int, int]:
        """(file_id, width, height); uploads are taken while the models load, not while draining."""
        self.lifecycle.require_open()
        return self.images.upload(data, filename)

    def _segment_bytes(self, job: SegmentJob, w: int, h: int) -> int:
        """Upper bound of the request's own peak memory (the budget's charge)."""
        loaded = self.lifecycle.loaded
        repo, sched, p = loaded.repo, loaded.pipeline.scheduler, job.params
        clip_batch = sched.max_batch("clip") if "clip" in sched.configs else 0
        n = request_bytes(
            p, w, h, repo.sam2, repo.clip if job.labels else None, sched.max_batch("decoder"), clip_batch,
            decoder_window=DECODER_WINDOW,
        )  # fmt: skip
        if job.depth:
            n += depth_bytes(w, h, repo.manifest["depth"])
        if job.text:
            n += text_bytes(w, h)
        return n

    async def segment(
        self, params: SegmentOptions, file_id: str | None, data: bytes | None, ctx: RequestContext, emit=None
    ) -> SegmentResult:
        self.lifecycle.require_ready()
        priority = priority_of(params, ctx.ceiling)
        async with self.admission.admit(priority, params.job, ctx) as ticket:
            job = plan_segment(self.cfg.pipeline, params, self.capabilities)
            if job.labels and job.params.vocabulary_name:
                job.labelling = await self.vocabularies.spec(job.params, ctx)
            opened = await self.images.open(file_id, data, "SegmentRequest")  # its size, not its pixels
            ticket.charge(self._segment_bytes(job, opened.width, opened.height))
            ticket.take_runtime()
            image, decode_ms = await self.images.decode(opened)
            check_prompts_inside(job.params, image.shape[1], image.shape[0])
            result = await self.lifecycle.loaded.pipeline.run(job, image, ctx, emit, image_key=opened.key)
            result.timings["decode_image"] = result.timings.get("decode_image", 0.0) + decode_ms
            result.timings["total"] += decode_ms
            return result

    async def relabel(self, request_id: str, params: SegmentOptions, ctx: RequestContext):
        """(labels, label mode, timings in ms) of a kept answer's masks scored under ``params``'
        labelling options (vocabulary or vocabulary_name, label_mode, top_k, min_confidence,
        thresholds); no model runs but the text tower for labels not seen before."""
        t0 = time.perf_counter()
        self.lifecycle.require_ready()
        self.lifecycle.require("labels", "relabelling")
        answers = self.lifecycle.answers
        answer = await answers.get_async(request_id) if answers is not None and request_id else None
        if answer is None:
            raise NotFound(
                f"no answer {clip_text(request_id)} is kept here: it expired from the answer cache "
                f"(--answer-cache-mb {self.cfg.answer_cache_mb}), was answered without labels, or never "
                "existed; segment the image again"
            )
        if answer.clip_model != self.vocabularies.clip_model:
            raise FailedPrecondition(f"answer {request_id} was labelled by CLIP model {answer.clip_model}")
        spec = await self.vocabularies.spec(resolve_relabel(self.cfg.pipeline, params), ctx)
        t1 = time.perf_counter()
        labels = await self.lifecycle.loaded.pipeline.labels.relabel(
            answer.embeddings, answer.chunks, spec, ctx
        )
        total = (time.perf_counter() - t0) * 1000.0
        return labels, spec.mode, {"clip": (time.perf_counter() - t1) * 1000.0, "total": total}

    async def segment_events(
        self, params: SegmentOptions, file_id: str | None, data: bytes | None, ctx: RequestContext
    ) -> AsyncGenerator[object, None]:
        """A Segment request as its stream of events (the proto's ``SegmentEvent`` order), ending
        with ``Done``; the request's error, if any, is raised after the events sent before it. The
        one stream pump of every transport: leaving the iteration early (the client went away)
        cancels the request and everything it queued."""
        events: asyncio.Queue = asyncio.Queue()
        task = asyncio.create_task(self.segment(params, file_id, data, ctx, events.put))
        task.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (ev := await events.get()) is not None:
                yield ev
                if isinstance(ev, Done):
                    break
            await task
        finally:
            ctx.cancel()
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            elif not task.cancelled():
                task.exception()  # retrieved: an early exit (deadline, client gone) logs nothing

    async def estimate_depth(self, file_id: str | None, data: bytes | None, ctx: RequestContext):
        """(DepthResult, timings in ms)."""
        self.lifecycle.require_ready()
        self.lifecycle.require("depth", "depth")
        depth = self.lifecycle.loaded.repo.manifest["depth"]
        async with self.admission.admit(DEFAULT, ctx=ctx) as ticket:
            t0 = time.perf_counter()
            opened = await self.images.open(file_id, data, "EstimateDepthRequest")
            ticket.charge(
                2 * opened.width * opened.height * 3 + depth_bytes(opened.width, opened.height, depth)
            )
            image, decode_ms = await self.images.decode(opened)
            result = await self.lifecycle.loaded.pipeline.estimate_depth(image, ctx)
            total = (time.perf_counter() - t0) * 1000.0
            return result, {
                "decode_image": decode_ms,
                "depth": total - decode_ms,
                "queue": ctx.queue_ms,
                "total": total,
            }

    async def extract_text(self, file_id: str | None, data: bytes | None, text_options: TextOptions | None,
                           ctx: RequestContext):  # fmt: skip
        """(TextResult, (width, height), timings in ms)."""
        self.lifecycle.require_ready()
        self.lifecycle.require("text", "text extraction")
        text_options = resolve_text(
            self.cfg.pipeline, text_options
        )  # bad thresholds: refused before any work
        async with self.admission.admit(DEFAULT, ctx=ctx) as ticket:
            t0 = time.perf_counter()
            opened = await self.images.open(file_id, data, "ExtractTextRequest")
            ticket.charge(2 * opened.width * opened.height * 3 + text_bytes(opened.width, opened.height))
            image, decode_ms = await self.images.decode(opened)
            text = await self.lifecycle.loaded.pipeline.extract_text(image, ctx, text_options)
            total = (time.perf_counter() - t0) * 1000.0
            timings = {
                "decode_image": decode_ms,
                "text": total - decode_ms,
                "queue": ctx.queue_ms,
                "total": total,
            }
            return text, (image.shape[1], image.shape[0]), timings

    def info(self) -> dict:
        cfg, loaded, caps = self.cfg, self.lifecycle.loaded, self.capabilities
        backend = loaded.backend if loaded else None
        return {
            "version": __version__,
            "backend": backend.info.name if backend else cfg.backend,
            "device": backend.info.device if backend else cfg.device,
            "providers": list(backend.info.providers) if backend else [],
            "models": loaded.repo.models_info(backend.loaded()) if loaded else [],
            "random_weights": bool(loaded and loaded.repo.random_weights),
            "default_vocabulary": list(cfg.pipeline.vocabulary),
            "limits": {
                "max_image_bytes": cfg.max_image_bytes,
                "max_image_pixels": cfg.max_image_pixels,
                "max_points_per_side": cfg.pipeline.max_points_per_side,
                "max_prompts": cfg.pipeline.max_prompts,
                "max_vocabulary": cfg.pipeline.max_vocabulary,
                "max_queue": cfg.max_queue,
                "max_masks": cfg.pipeline.max_masks_limit,
                "max_memory_bytes": self.admission.budget.limit,
                "embedding_cache_bytes": cfg.embedding_cache_mb << 20,
                "max_vocabularies": cfg.max_vocabularies,
                "max_examples_per_label": cfg.max_examples_per_label,
                "max_vocabulary_bytes": cfg.max_vocabulary_mb << 20,
                "answer_cache_bytes": (cfg.answer_cache_mb << 20)
                if self.lifecycle.answers is not None
                else 0,
                **self.tracking.limits(),
            },
            "labels_unavailable_reason": caps.why_not("labels"),
            "depth_unavailable_reason": caps.why_not("depth"),
            "text_unavailable_reason": caps.why_not("text"),
            "tracking_unavailable_reason": caps.why_not("tracking"),
            "served_by": self.served_by,
            "upload_store": self.images.files.describe(),
            # every option the server fills when a request leaves it unset (seglabel_api.options)
            "defaults": {
                **options.server_defaults(cfg.pipeline),
                "min_confidence": 0.0,
                "multi_label_threshold": DEFAULT_MULTI_THRESHOLD,
            },  # fmt: skip
            "vocabulary_store": self.vocabularies.store.describe(),
            "clip_model": self.vocabularies.clip_model,
            "queues": loaded.pipeline.scheduler.queue_info() if loaded else [],
        }
