"""The domain service behind the servicer: uploaded files, model loading and warm-up, admission,
and the per-image feature cache. Raises typed errors; knows nothing of protobuf."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import socket
import time

import numpy as np

from seglabel_server import __version__, imaging, kinds, memory, uploads
from seglabel_server.backends import Backend, create_backend
from seglabel_server.budget import (
    Charge,
    MemoryBudget,
    depth_bytes,
    machine_memory_bytes,
    request_bytes,
    text_bytes,
)
from seglabel_server.config import ServerConfig
from seglabel_server.embedding_cache import EmbeddingCache
from seglabel_server.errors import (
    CapabilityUnavailable,
    InvalidArgument,
    LimitExceeded,
    ModelError,
    Overloaded,
    Unavailable,
    clip_text,
)
from seglabel_server.metrics import Metrics
from seglabel_server.ocr import OcrEngine
from seglabel_server.pipeline import Pipeline
from seglabel_server.pipeline.validation import resolve_text
from seglabel_server.repository import ModelRepository
from seglabel_server.scheduler import Scheduler
from seglabel_server.tokenizer import ClipTokenizer
from seglabel_server.types import RequestContext, SegmentParams, SegmentResult

log = logging.getLogger(__name__)


_FILE_ID = re.compile(r"[0-9a-f]{64}")


def check_file_id(file_id: str) -> None:
    """An upload id is a sha256 in lowercase hex; anything else is refused before any lookup."""
    if not _FILE_ID.fullmatch(file_id):
        raise InvalidArgument(
            f"file_id must be 64 lowercase hex characters (a sha256), got {clip_text(file_id)}"
        )


FAMILY_HINTS = {
    "clip": "export with --clip",
    "depth": "export with --depth (make models does)",
    "ocr": "pip install rapidocr_onnxruntime, then export (--ocr yes)",
}


def build_pipeline(
    backend: Backend,
    repo: ModelRepository,
    cfg: ServerConfig,
    metrics: Metrics | None = None,
    labels_unavailable_reason: str = "",
    unavailable: dict[str, str] | None = None,
) -> Pipeline:
    """Scheduler + pipeline over a loaded backend (the server, the benchmarks and the tests use this).
    The scheduler gets one stage per model the backend loaded. ``unavailable``: why an optional
    family (depth, ocr) is not served, when the caller knows."""
    unavailable = dict(unavailable or {})
    tokenizer = None
    reason = labels_unavailable_reason
    has_clip = all(k.model in backend.loaded() for k in kinds.all_kinds() if k.family == "clip")
    if has_clip and repo.has_clip:
        try:
            tokenizer = ClipTokenizer(repo.tokenizer_path(), repo.clip["context_length"])
        except Exception as exc:
            reason = f"CLIP tokenizer failed to load: {exc}"
    elif not reason:
        reason = "CLIP models not loaded"
    loaded = set(backend.loaded())
    stages = {s: c for s, c in cfg.stage_configs().items() if kinds.get(s).model in loaded}
    scheduler = Scheduler(
        backend, stages, metrics, batching=cfg.batching, workers=cfg.worker_groups(list(stages))
    )
    for family in ("depth", "ocr"):
        has = all(k.model in loaded for k in kinds.all_kinds() if k.family == family)
        if not has and family not in unavailable:
            unavailable[family] = f"no {family} models in {repo.root} ({FAMILY_HINTS[family]})"
    ocr_engine = None
    if "ocr" not in unavailable:
        try:
            ocr_engine = OcrEngine(repo, scheduler)
        except Exception as exc:  # rapidocr missing or incompatible: serve without OCR, say why
            unavailable["ocr"] = f"OCR failed to start: {exc}"
    return Pipeline(
        cfg.pipeline,
        repo.sam2,
        repo.clip,
        scheduler,
        tokenizer,
        "" if tokenizer is not None else reason,
        cpu_threads=cfg.cpu_threads or (os.cpu_count() or 2),
        upsample_on_backend=backend.upsample_masks,
        device_ops=backend.device_ops(),
        multi_image="multi_image" in backend.capabilities,
        depth_meta=repo.manifest.get("depth"),
        depth_unavailable_reason=unavailable.get("depth", ""),
        ocr_engine=ocr_engine,
        text_unavailable_reason=unavailable.get("ocr", ""),
        ocr_threads=max(2, cfg.max_inflight),
        embeddings=EmbeddingCache(cfg.embedding_cache_mb << 20, metrics)
        if cfg.embedding_cache_mb > 0
        else None,
    )


class SeglabelService:
    def __init__(self, cfg: ServerConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        # who answers: the Ray Serve replica sets its replica id here
        self.served_by = f"{socket.gethostname()}:{os.getpid()}"
        self.files = uploads.open_store(cfg.upload_store, cfg.upload_cache_mb << 20, cfg.upload_ttl_s)
        self.repo: ModelRepository | None = None
        self.backend: Backend | None = None
        self.scheduler: Scheduler | None = None
        self.pipeline: Pipeline | None = None
        self.ready = asyncio.Event()
        self.load_error: str = ""
        self.inflight = 0
        self.idle = asyncio.Event()  # set whenever no request is in flight
        self.idle.set()
        self.draining = False
        limit = cfg.max_memory_mb << 20 if cfg.max_memory_mb else machine_memory_bytes() // 2
        self.budget = MemoryBudget(limit)
        self.metrics.inflight.set_function(lambda: self.inflight)
        self.metrics.budget_used.set_function(lambda: self.budget.used)

    # ------------------------------------------------------------------------------------- lifecycle
    async def load(self) -> None:
        """Load models (in a thread: the loop keeps answering health checks), then warm up."""
        t0 = time.perf_counter()
        try:
            await asyncio.to_thread(self._load_models)
            graphs, seconds = await asyncio.to_thread(self.backend.warm_up)
            if graphs:
                what = "AOTInductor packages" if self.cfg.torch_compile == "aot" else "compiled engines"
                log.info("%s: %d warm-up runs (every bucket) in %.1fs", what, graphs, seconds)
            if self.cfg.warmup:
                await self._warmup()
        except Exception as exc:
            self.load_error = str(exc)
            log.error("model loading failed: %s", exc)
            raise
        self.ready.set()
        log.info(
            "models loaded and warmed up in %.1fs (%s on %s, providers %s)%s",
            time.perf_counter() - t0,
            self.backend.info.name,
            self.backend.info.device,
            self.backend.info.providers,
            " -- RANDOM WEIGHTS: masks and labels are meaningless" if self.repo.random_weights else "",
        )

    def _load_models(self) -> None:
        cfg = self.cfg
        self.repo = ModelRepository.load(cfg.models)
        reason = ""
        unavailable: dict[str, str] = {}
        families = {k.family for k in kinds.all_kinds()}
        if not cfg.load_clip:
            reason = "CLIP disabled by the server's configuration (--no-clip)"
            families.discard("clip")
        elif not self.repo.has_clip:
            reason = f"no CLIP models in {self.repo.root}"
        self.backend = create_backend(
            cfg.backend, self.repo, cfg.device, cfg.precision, cfg.threads, models=[],
            arena_shrinkage=cfg.arena_shrinkage, cpu_arena=cfg.cpu_arena,
            mask_path=cfg.mask_path, decoder_layout=cfg.decoder_layout,
            io_binding={"auto": None, "on": True, "off": False}[cfg.ort_io_binding],
            compile_mode=cfg.torch_compile,
            max_batches={kinds.get(s).model: c.max_batch_size for s, c in cfg.stage_configs().items()},
        )  # fmt: skip
        required = {k.family for k in kinds.all_kinds() if k.required}
        for family in sorted(families, key=lambda f: (f not in required, f)):
            models = self.repo.available_models({family})
            try:
                for model in models:
                    self.backend.load(model)
            except ModelError as exc:
                if family in required:
                    raise
                # Segmentation works without the optional models: serve without them, say why.
                log.warning("%s failed to load (%s); serving without it", family, exc)
                if family == "clip":
                    reason = f"CLIP failed to load: {exc}"
                unavailable[family] = f"{family} models failed to load: {exc}"
                for model in models:
                    self.backend.unload(model)
        self.pipeline = build_pipeline(self.backend, self.repo, cfg, self.metrics, reason, unavailable)
        cache = self.pipeline.embeddings
        self.metrics.embedding_bytes.set_function(lambda: cache.bytes if cache is not None else 0)
        for family, why in (
            ("depth", self.pipeline.depth_unavailable_reason),
            ("ocr", self.pipeline.text_unavailable_reason),
        ):
            if why:
                log.warning("serving without %s: %s", family, why)
        self.scheduler = self.pipeline.scheduler

    async def _warmup(self) -> None:
        """One small request through every model, and the default vocabulary's text embeddings."""
        rng = np.random.default_rng(0)
        image = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
        ctx = RequestContext(request_id="warmup")
        await self.pipeline.run(SegmentParams(prompt_type="points", points=[(32.0, 32.0, 1)]), image, ctx)
        if self.pipeline.has_clip:
            await self.pipeline.labels.text_embeddings(tuple(self.cfg.pipeline.vocabulary), ctx)
            s = self.repo.clip["image_size"]
            await self.scheduler.run("clip", np.zeros((1, 3, s, s), np.float32), ctx)
        if self.pipeline.depth_meta is not None:
            await self.pipeline.estimate_depth(image, ctx)
        if self.pipeline.ocr is not None:
            await self.pipeline.extract_text(image, ctx)

    async def close(self) -> None:
        if self.pipeline:
            await asyncio.to_thread(self.pipeline.close)
        if self.backend:
            self.backend.close()
        self.files.close()

    # ----------------------------------------------------------------------------------------- calls
    def upload(self, data: bytes, filename: str = "") -> tuple[str, int, int]:
        if self.draining:
            raise Unavailable("server is shutting down; retry on another replica or later")
        self._check_size(data)
        image = imaging.decode_image(data, self.cfg.max_image_pixels)
        h, w = image.shape[:2]
        return self.files.put(data, filename), w, h

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.cfg.max_image_bytes:
            raise LimitExceeded(f"image of {len(data)} bytes is over the limit of {self.cfg.max_image_bytes}")

    def drain(self) -> None:
        """Refuse new requests (UNAVAILABLE); those in flight go on."""
        self.draining = True

    def _require_ready(self) -> None:
        if self.draining:
            raise Unavailable("server is shutting down; retry on another replica or later")
        if not self.ready.is_set():
            raise Unavailable(
                f"models are not loaded{': ' + self.load_error if self.load_error else ' yet'}",
                retry_after_ms=None if self.load_error else 1000,
            )

    @contextlib.asynccontextmanager
    async def _admitted(self):
        """One admitted request: counted against --max-inflight, its memory charges (appended to
        the yielded list) released and the heap trimmed when the server goes idle, whatever the exit."""
        self._require_ready()
        if self.inflight >= self.cfg.max_inflight:
            self.metrics.rejected.labels("admission").inc()
            raise Overloaded(
                f"{self.inflight} requests in flight (limit {self.cfg.max_inflight}); retry later"
            )
        self.inflight += 1
        self.idle.clear()
        charges: list[Charge] = []
        try:
            yield charges
        finally:
            self.inflight -= 1
            for c in charges:
                c.release()
            if self.inflight == 0:
                self.idle.set()
                memory.trim()  # freed request memory back to the OS once the server is idle

    async def _image(self, file_id: str | None, data: bytes | None, charges: list, estimate, what: str):
        """The request's image, decoded once; ``estimate(w, h)`` (bytes) is charged after the header
        is read and before the pixels are decoded. Returns (RGB array, milliseconds, sha256 of the
        bytes: the upload's file_id, or computed for inline bytes when the embedding cache needs it)."""
        t0 = time.perf_counter()
        if file_id:
            check_file_id(file_id)
        elif not data:
            raise InvalidArgument(f"{what} needs file_id or image bytes")

        def admit(w: int, h: int) -> None:
            charges.append(self.budget.charge(estimate(w, h)))

        def decode():
            nonlocal data
            if file_id:
                data = self.files.get(file_id)  # disk or network: off the event loop
            self._check_size(data)
            cache = self.pipeline.embeddings
            key = file_id or (hashlib.sha256(data).hexdigest() if cache is not None else None)
            image = cache.image(key) if cache is not None and key else None
            if image is not None:  # seen before: decoded already
                admit(image.shape[1], image.shape[0])
                return image, key
            image = imaging.decode_image(data, self.cfg.max_image_pixels, admit)
            if cache is not None and key:
                cache.put_image(key, image)
            return image, key

        image, key = await asyncio.to_thread(decode)
        return image, (time.perf_counter() - t0) * 1000.0, key

    async def segment(
        self, params: SegmentParams, file_id: str | None, data: bytes | None, ctx: RequestContext, emit=None
    ) -> SegmentResult:
        async with self._admitted() as charges:
            p = self.pipeline.resolve(params)
            pipe = self.pipeline

            def estimate(w: int, h: int) -> int:
                n = request_bytes(
                    p, w, h, self.repo.sam2, self.repo.clip if pipe.has_clip else None,
                    self.scheduler.max_batch("decoder"), self._clip_batch(),
                )  # fmt: skip
                if p.with_depth and pipe.depth_meta is not None:
                    n += depth_bytes(w, h, pipe.depth_meta)
                if p.with_text and pipe.ocr is not None:
                    n += text_bytes(w, h)
                return n

            image, decode_ms, key = await self._image(file_id, data, charges, estimate, "SegmentRequest")
            result = await pipe.run(p, image, ctx, emit, image_key=key)
            result.timings["decode_image"] = result.timings.get("decode_image", 0.0) + decode_ms
            result.timings["total"] += decode_ms
            return result

    async def estimate_depth(self, file_id: str | None, data: bytes | None, ctx: RequestContext):
        """(DepthResult, timings in ms)."""
        self._require_ready()
        pipe = self.pipeline
        if pipe.depth_meta is None:
            raise CapabilityUnavailable(
                f"depth is not available on this server: {pipe.depth_unavailable_reason}"
            )
        async with self._admitted() as charges:
            t0 = time.perf_counter()
            image, decode_ms, _ = await self._image(
                file_id, data, charges, lambda w, h: 2 * w * h * 3 + depth_bytes(w, h, pipe.depth_meta),
                "EstimateDepthRequest",
            )  # fmt: skip
            depth = await pipe.estimate_depth(image, ctx)
            total = (time.perf_counter() - t0) * 1000.0
            return depth, {
                "decode_image": decode_ms,
                "depth": total - decode_ms,
                "queue": ctx.queue_ms,
                "total": total,
            }

    async def extract_text(self, file_id: str | None, data: bytes | None, options, ctx: RequestContext):
        """(TextResult, (width, height), timings in ms)."""
        self._require_ready()
        pipe = self.pipeline
        if pipe.ocr is None:
            raise CapabilityUnavailable(
                f"text extraction is not available on this server: {pipe.text_unavailable_reason}"
            )
        options = resolve_text(self.cfg.pipeline, options)  # bad thresholds: refused before any work
        async with self._admitted() as charges:
            t0 = time.perf_counter()
            image, decode_ms, _ = await self._image(
                file_id, data, charges, lambda w, h: 2 * w * h * 3 + text_bytes(w, h), "ExtractTextRequest"
            )
            text = await pipe.extract_text(image, ctx, options)
            total = (time.perf_counter() - t0) * 1000.0
            timings = {
                "decode_image": decode_ms,
                "text": total - decode_ms,
                "queue": ctx.queue_ms,
                "total": total,
            }
            return text, (image.shape[1], image.shape[0]), timings

    def _clip_batch(self) -> int:
        return self.scheduler.max_batch("clip") if "clip" in self.scheduler.configs else 0

    def info(self) -> dict:
        cfg = self.cfg
        repo, backend = self.repo, self.backend
        return {
            "version": __version__,
            "backend": backend.info.name if backend else cfg.backend,
            "device": backend.info.device if backend else cfg.device,
            "providers": list(backend.info.providers) if backend else [],
            "models": repo.models_info(backend.loaded()) if repo and backend else [],
            "random_weights": bool(repo and repo.random_weights),
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
            },
            "labels_unavailable_reason": (
                self.pipeline.labels_unavailable_reason
                if self.pipeline and not self.pipeline.has_clip
                else ""
            ),
            "depth_unavailable_reason": self.pipeline.depth_unavailable_reason if self.pipeline else "",
            "text_unavailable_reason": self.pipeline.text_unavailable_reason if self.pipeline else "",
            "served_by": self.served_by,
            "upload_store": self.files.describe(),
        }
