"""The domain service behind every transport: uploaded files, loading, admission, each request
resolved and checked once, then run on the pipeline. Raises typed errors; knows nothing of protobuf
or HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator

import numpy as np
from seglabel_api import options

from seglabel_server import __version__, memory
from seglabel_server.errors import (
    CapabilityUnavailable,
    FailedPrecondition,
    InvalidArgument,
    LimitExceeded,
    NotFound,
    Overloaded,
    Unavailable,
    clip_text,
)
from seglabel_server.metrics import Metrics
from seglabel_server.models import images, kinds
from seglabel_server.pipeline.pipeline import DECODER_WINDOW
from seglabel_server.pipeline.scoring import DEFAULT_MULTI_THRESHOLD
from seglabel_server.service import loading
from seglabel_server.service.budget import (
    Charge,
    MemoryBudget,
    RuntimeMemory,
    depth_bytes,
    machine_memory_bytes,
    request_bytes,
    runtime_bytes,
    text_bytes,
)
from seglabel_server.service.capabilities import Capabilities
from seglabel_server.service.config import ServerConfig
from seglabel_server.service.params import check_prompts_inside, plan_segment, resolve_relabel, resolve_text
from seglabel_server.service.vocabularies import Vocabularies
from seglabel_server.storage import uploads
from seglabel_server.storage.answers import AnswerCache
from seglabel_server.storage.uploads import check_file_id
from seglabel_server.storage.vocabularies import open_vocabularies
from seglabel_server.types import Done, RequestContext, SegmentJob, SegmentOptions, SegmentResult, TextOptions

log = logging.getLogger(__name__)


# Growth of the process since memory was last given back past which an idle server gives the
# runtime's arena back even when it holds one image's working memory (see _release_memory).
REGROW_BYTES = 256 << 20


class SeglabelService:
    def __init__(self, cfg: ServerConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        # who answers: the Ray Serve replica sets its replica id here
        self.served_by = f"{socket.gethostname()}:{os.getpid()}"
        self.files = uploads.open_store(cfg.upload_store, cfg.upload_cache_mb << 20, cfg.upload_ttl_s)
        self.vocabularies = Vocabularies(self, open_vocabularies(cfg.vocabulary_store or cfg.upload_store))
        self.answers: AnswerCache | None = None
        self.loaded: loading.Loaded | None = None
        self.ready = asyncio.Event()
        self.load_error: str = ""
        self.inflight = 0
        self.idle = asyncio.Event()  # set whenever no request is in flight
        self.idle.set()
        self.draining = False
        self.idle_epoch = 0  # one more each time the server goes idle: a later release checks it
        self.background: set[asyncio.Task] = set()
        self.runtime: RuntimeMemory | None = None  # the models' working memory on the host (after load)
        self.rest_rss = 0  # RSS when memory was last given back (_release_memory)
        self.hold_s = 1.0  # moving mean of how long an admitted request holds its place (s)
        limit = cfg.max_memory_mb << 20 if cfg.max_memory_mb else machine_memory_bytes() // 2
        self.budget = MemoryBudget(limit)
        self.metrics.inflight.set_function(lambda: self.inflight)
        self.metrics.budget_used.set_function(lambda: self.budget.used)

    @property
    def capabilities(self) -> Capabilities:
        return self.loaded.capabilities if self.loaded else Capabilities()

    # ------------------------------------------------------------------------------------- lifecycle
    async def load(self) -> None:
        """Load models (in a thread: the loop keeps answering health checks), then warm up."""
        t0 = time.perf_counter()
        try:
            self.loaded = await asyncio.to_thread(loading.load, self.cfg, self.metrics)
            if self.cfg.answer_cache_mb > 0 and self.capabilities.serves("labels"):
                shared = self.cfg.upload_store if self.files.shared else ""
                self.answers = AnswerCache(self.cfg.answer_cache_mb << 20, shared, self.cfg.answer_ttl_s)
                self.loaded.pipeline.parts.answers = self.answers
            cache = self.loaded.embeddings
            self.metrics.embedding_bytes.set_function(lambda: cache.bytes if cache is not None else 0)
            graphs, seconds = await asyncio.to_thread(self.loaded.backend.warm_up)
            if graphs:
                what = "AOTInductor packages" if self.cfg.torch_compile == "aot" else "compiled engines"
                log.info("%s: %d warm-up runs (every bucket) in %.1fs", what, graphs, seconds)
            backend = self.loaded.backend
            if backend.info.device == "cpu":
                sched = self.loaded.pipeline.scheduler
                self.runtime = RuntimeMemory(
                    self.budget,
                    runtime_bytes(self.loaded.repo.sam2),
                    sched.max_batch("encoder"),
                    backend.keeps_arena,
                )
            if self.cfg.warmup:
                await self._warmup()
                if self.runtime is not None:
                    self.runtime.filled(1)  # the warm-up's encoder run grew the arena to one image
            self.rest_rss = memory.rss_bytes()
        except Exception as exc:
            self.load_error = str(exc)
            log.error("model loading failed: %s", exc)
            raise
        self.ready.set()
        if self.inflight == 0:
            self._release_when_idle()  # what warm-up took, back unless requests keep it in use
        info = self.loaded.backend.info
        log.info(
            "models loaded and warmed up in %.1fs (%s on %s, providers %s)%s",
            time.perf_counter() - t0,
            info.name,
            info.device,
            info.providers,
            " -- RANDOM WEIGHTS: masks and labels are meaningless" if self.loaded.repo.random_weights else "",
        )

    async def _warmup(self) -> None:
        """One small request through every model, and the default vocabulary's text embeddings."""
        image = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
        ctx = RequestContext(request_id="warmup")
        await self.loaded.run(SegmentOptions(prompt_type="points", points=[(32.0, 32.0, 1)]), image, ctx)
        await self.loaded.pipeline.warm_up(tuple(self.cfg.pipeline.vocabulary), image, ctx)

    async def close(self) -> None:
        for task in list(self.background):
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.loaded:
            await asyncio.to_thread(self.loaded.close)
            self.loaded.backend.close()
        self.files.close()
        self.vocabularies.store.close()
        if self.answers is not None:
            self.answers.close()

    def drain(self) -> None:
        """Refuse new requests (UNAVAILABLE); those in flight go on."""
        self.draining = True

    # --------------------------------------------------------------------------------- admission
    def _require_ready(self) -> None:
        if self.draining:
            raise Unavailable("server is shutting down; retry on another replica or later")
        if not self.ready.is_set():
            raise Unavailable(
                f"models are not loaded{': ' + self.load_error if self.load_error else ' yet'}",
                retry_after_ms=None if self.load_error else 1000,
            )

    def _require(self, family: str, what: str) -> None:
        if not self.capabilities.serves(family):
            raise CapabilityUnavailable(
                f"{what} is not available on this server: {self.capabilities.why_not(family)}"
            )

    @contextlib.asynccontextmanager
    async def _admitted(self):
        """One admitted request: counted against --max-inflight, its memory charges (appended to
        the yielded list) released and the heap trimmed when the server goes idle, whatever the exit."""
        self._require_ready()
        if self.inflight >= self.cfg.max_inflight:
            self.metrics.rejected.labels("admission").inc()
            raise Overloaded(
                f"{self.inflight} requests in flight (limit {self.cfg.max_inflight}); retry later",
                self.retry_after_ms(),
            )
        self.inflight += 1
        self.idle.clear()
        charges: list[Charge] = []
        t0 = time.monotonic()
        try:
            yield charges
        finally:
            # mean time a request holds its place, for the pushback of those refused meanwhile
            self.hold_s += 0.2 * (time.monotonic() - t0 - self.hold_s)
            self.inflight -= 1
            for c in charges:
                c.release()
            if self.inflight == 0:
                self.idle.set()
                self._release_when_idle()

    def _release_when_idle(self) -> None:
        """Memory back to the OS once the server stays idle ``idle_release_s``: the runtime's arena
        and the C heap keep a burst's peak for the next requests otherwise. Back-to-back requests
        never wait for it (giving back and taking again costs page faults on every request)."""
        self.idle_epoch += 1
        epoch = self.idle_epoch

        async def later() -> None:
            await asyncio.sleep(self.cfg.idle_release_s)
            if self.inflight == 0 and self.idle_epoch == epoch and self.loaded is not None:
                await asyncio.to_thread(self._release_memory)

        task = asyncio.get_running_loop().create_task(later())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def _release_memory(self) -> None:
        """With ``keep_working_set`` (the default) the runtime's arena is given back only when it
        holds more than one image's working memory (a burst ran several encoder images at once) or
        the process grew by over ``REGROW_BYTES`` since the last time (another model's larger
        run), and then one encoder run on zeros fills it again: requests start warm. Without it
        everything is given back. The C heap's free pages are returned either way."""
        backend, runtime = self.loaded.backend, self.runtime
        keep = self.cfg.keep_working_set and runtime is not None and runtime.kept
        grown = runtime is not None and (
            runtime.held_shares > 1 or memory.rss_bytes() > self.rest_rss + REGROW_BYTES
        )
        if not keep or grown:
            backend.release_memory()
            if runtime is not None:
                runtime.released()
            memory.trim()
            if keep and self.inflight == 0 and backend.reserve(kinds.get("encoder").model):
                runtime.filled(1)
        memory.trim()
        self.rest_rss = memory.rss_bytes()

    def retry_after_ms(self) -> int:
        """When a refused request is likely to find room: a place frees every (mean time a request
        is held / requests in flight), on average; between 50 ms and 10 s."""
        return int(min(10_000, max(50, 1000 * self.hold_s / max(1, self.inflight))))

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.cfg.max_image_bytes:
            raise LimitExceeded(f"image of {len(data)} bytes is over the limit of {self.cfg.max_image_bytes}")

    async def _image(self, file_id: str | None, data: bytes | None, charges: list, estimate, what: str,
                     runtime=None):  # fmt: skip
        """The request's image, decoded once; ``estimate(w, h)`` (bytes) is charged after the header
        is read and before the pixels are decoded. Returns (RGB array, milliseconds, sha256 of the
        bytes: the upload's file_id, or computed for inline bytes when the embedding cache needs it)."""
        t0 = time.perf_counter()
        if file_id:
            check_file_id(file_id)
        elif not data:
            raise InvalidArgument(f"{what} needs file_id or image bytes")
        cache = self.loaded.embeddings

        def admit(w: int, h: int) -> None:
            try:
                charges.append(self.budget.charge(estimate(w, h)))
                if runtime is not None:
                    runtime(charges)
            except Overloaded as exc:
                self.metrics.rejected.labels("memory").inc()
                exc.retry_after_ms = self.retry_after_ms()
                raise

        def decode():
            nonlocal data
            if file_id:
                data = self.files.get(file_id)  # disk or network: off the event loop
            self._check_size(data)
            key = file_id or hashlib.sha256(data).hexdigest()
            image = cache.image(key) if cache is not None and key else None
            if image is not None:  # seen before: decoded already
                admit(image.shape[1], image.shape[0])
                return image, key
            image = images.decode_image(data, self.cfg.max_image_pixels, admit)
            if cache is not None and key:
                cache.put_image(key, image)
            return image, key

        image, key = await asyncio.to_thread(decode)
        return image, (time.perf_counter() - t0) * 1000.0, key

    # ----------------------------------------------------------------------------------------- calls
    def upload(self, data: bytes, filename: str = "") -> tuple[str, int, int]:
        if self.draining:
            raise Unavailable("server is shutting down; retry on another replica or later")
        self._check_size(data)
        image = images.decode_image(data, self.cfg.max_image_pixels)
        h, w = image.shape[:2]
        return self.files.put(data, filename), w, h

    def _segment_bytes(self, job: SegmentJob, w: int, h: int) -> int:
        """Upper bound of the request's own peak memory (the budget's charge)."""
        repo, sched, p = self.loaded.repo, self.loaded.pipeline.scheduler, job.params
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

    def _runtime_charge(self, charges: list[Charge]) -> None:
        """The models' working memory on the host (:class:`RuntimeMemory`); nothing on a GPU."""
        share = self.runtime.take() if self.runtime is not None else None
        if share is not None:
            charges.append(share)

    async def segment(
        self, params: SegmentOptions, file_id: str | None, data: bytes | None, ctx: RequestContext, emit=None
    ) -> SegmentResult:
        async with self._admitted() as charges:
            job = plan_segment(self.cfg.pipeline, params, self.capabilities)
            if job.labels and job.params.vocabulary_name:
                job.labelling = await self.vocabularies.spec(job.params, ctx)
            image, decode_ms, key = await self._image(
                file_id, data, charges, lambda w, h: self._segment_bytes(job, w, h), "SegmentRequest",
                self._runtime_charge,
            )  # fmt: skip
            check_prompts_inside(job.params, image.shape[1], image.shape[0])
            result = await self.loaded.pipeline.run(job, image, ctx, emit, image_key=key)
            result.timings["decode_image"] = result.timings.get("decode_image", 0.0) + decode_ms
            result.timings["total"] += decode_ms
            return result

    async def relabel(self, request_id: str, params: SegmentOptions, ctx: RequestContext):
        """(labels, label mode, timings in ms) of a kept answer's masks scored under ``params``'
        labelling options (vocabulary or vocabulary_name, label_mode, top_k, min_confidence,
        thresholds); no model runs but the text tower for labels not seen before."""
        t0 = time.perf_counter()
        self._require_ready()
        self._require("labels", "relabelling")
        answer = await self.answers.get_async(request_id) if self.answers is not None and request_id else None
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
        labels = await self.loaded.pipeline.relabel(answer.embeddings, answer.chunks, spec, ctx)
        total = (time.perf_counter() - t0) * 1000.0
        return labels, spec.mode, {"clip": (time.perf_counter() - t1) * 1000.0, "total": total}

    async def segment_events(
        self, params: SegmentOptions, file_id: str | None, data: bytes | None, ctx: RequestContext
    ) -> AsyncIterator[object]:
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
        self._require_ready()
        self._require("depth", "depth")
        depth = self.loaded.repo.manifest["depth"]
        async with self._admitted() as charges:
            t0 = time.perf_counter()
            image, decode_ms, _ = await self._image(
                file_id,
                data,
                charges,
                lambda w, h: 2 * w * h * 3 + depth_bytes(w, h, depth),
                "EstimateDepthRequest",
            )
            result = await self.loaded.pipeline.estimate_depth(image, ctx)
            total = (time.perf_counter() - t0) * 1000.0
            return result, {
                "decode_image": decode_ms,
                "depth": total - decode_ms,
                "queue": ctx.queue_ms,
                "total": total,
            }

    async def extract_text(self, file_id: str | None, data: bytes | None, options: TextOptions | None,
                           ctx: RequestContext):  # fmt: skip
        """(TextResult, (width, height), timings in ms)."""
        self._require_ready()
        self._require("text", "text extraction")
        options = resolve_text(self.cfg.pipeline, options)  # bad thresholds: refused before any work
        async with self._admitted() as charges:
            t0 = time.perf_counter()
            image, decode_ms, _ = await self._image(
                file_id, data, charges, lambda w, h: 2 * w * h * 3 + text_bytes(w, h), "ExtractTextRequest"
            )
            text = await self.loaded.pipeline.extract_text(image, ctx, options)
            total = (time.perf_counter() - t0) * 1000.0
            timings = {
                "decode_image": decode_ms,
                "text": total - decode_ms,
                "queue": ctx.queue_ms,
                "total": total,
            }
            return text, (image.shape[1], image.shape[0]), timings

    def info(self) -> dict:
        cfg, loaded, caps = self.cfg, self.loaded, self.capabilities
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
                "max_memory_bytes": self.budget.limit,
                "embedding_cache_bytes": cfg.embedding_cache_mb << 20,
                "max_vocabularies": cfg.max_vocabularies,
                "max_examples_per_label": cfg.max_examples_per_label,
                "max_vocabulary_bytes": cfg.max_vocabulary_mb << 20,
                "answer_cache_bytes": (cfg.answer_cache_mb << 20) if self.answers is not None else 0,
            },
            "labels_unavailable_reason": caps.why_not("labels"),
            "depth_unavailable_reason": caps.why_not("depth"),
            "text_unavailable_reason": caps.why_not("text"),
            "served_by": self.served_by,
            "upload_store": self.files.describe(),
            # every option the server fills when a request leaves it unset (seglabel_api.options)
            "defaults": {
                **options.server_defaults(cfg.pipeline),
                "min_confidence": 0.0,
                "multi_label_threshold": DEFAULT_MULTI_THRESHOLD,
            },  # fmt: skip
            "vocabulary_store": self.vocabularies.store.describe(),
            "clip_model": self.vocabularies.clip_model,
        }
