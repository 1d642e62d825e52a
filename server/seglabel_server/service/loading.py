"""Loading: the repository read, a backend opened with every model it can load, the scheduler and the
pipeline over it, and what the server serves (:class:`Capabilities`) decided once, with the reasons.
The server does this at start; tests and benchmarks build the same over a backend of their own with
:func:`build_pipeline`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import threadpoolctl

from seglabel_server.backends import Backend, open_backend
from seglabel_server.errors import ModelError
from seglabel_server.metrics import Metrics
from seglabel_server.models import kinds
from seglabel_server.models.repository import ModelRepository
from seglabel_server.models.tokenizer import ClipTokenizer
from seglabel_server.niceness import BATCH_NICE
from seglabel_server.pipeline import Pipeline, PipelineParts
from seglabel_server.pipeline.ocr import OcrEngine
from seglabel_server.scheduler import Scheduler
from seglabel_server.service.capabilities import HINTS, Capabilities
from seglabel_server.service.config import ServerConfig
from seglabel_server.service.params import check_prompts_inside, plan_segment
from seglabel_server.storage.embedding_cache import EmbeddingCache
from seglabel_server.types import RequestContext, SegmentOptions, SegmentResult

log = logging.getLogger(__name__)

# the manifest family of each optional capability, and back
_FAMILY = {"labels": "clip", "depth": "depth", "text": "ocr", "tracking": "sam2_video"}
_CAPABILITY = {family: what for what, family in _FAMILY.items()}


@dataclass
class Loaded:
    """What loading produced: the repository, the backend, the pipeline over it, what it serves (and
    why not), and the embedding cache (None: off). :meth:`run` is a Segment request in process."""

    cfg: ServerConfig
    repo: ModelRepository
    backend: Backend
    pipeline: Pipeline
    capabilities: Capabilities
    embeddings: EmbeddingCache | None

    async def run(self, params: SegmentOptions, image: np.ndarray, ctx: RequestContext, emit=None,
                  image_key: str | None = None) -> SegmentResult:  # fmt: skip
        """``params`` planned (resolved and checked, as the service does) and run on ``image``."""
        job = plan_segment(self.cfg.pipeline, params, self.capabilities)
        check_prompts_inside(job.params, image.shape[1], image.shape[0])
        return await self.pipeline.run(job, image, ctx, emit, image_key)

    def close(self) -> None:
        self.pipeline.close()


def clip_model_id(clip: dict) -> str:
    """What a vocabulary records of the CLIP model its examples were embedded with."""
    spec = clip.get("spec") or {}
    return f"{spec.get('architecture', 'clip')}@{str(clip.get('sha256', ''))[:16]}"


def limit_blas(threads: int) -> None:
    """numpy's BLAS at ``threads`` threads in this process (0: left as it is). The server's products
    (label scores) are small, and OpenBLAS's idle threads spin for a while after each one: with the
    zero-cost models (make bench-serial, docs/gpu.md) they took 82 ms of CPU per grid-16 answer on
    this project's 2-core machine."""
    if threads > 0:
        threadpoolctl.threadpool_limits(limits=threads, user_api="blas")
        # and a BLAS loaded later in the process (numba's first compile loads scipy's) reads these
        for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)


def load(cfg: ServerConfig, metrics: Metrics | None = None) -> Loaded:
    """The repository ``cfg.models`` on ``cfg``'s backend. The required models must load; an optional
    family that is absent or fails to load is left out, and :class:`Capabilities` says why."""
    repo = ModelRepository.load(cfg.models)
    missing: dict[str, str] = {}
    families = {k.family for k in kinds.all_kinds()}
    if not cfg.load_clip:
        missing["labels"] = "CLIP disabled by the server's configuration (--no-clip)"
        families.discard("clip")
    elif not repo.has_clip:
        missing["labels"] = f"no CLIP models in {repo.root}"
    backend = open_backend(repo, cfg.backend_config(), models=[])
    required = {k.family for k in kinds.all_kinds() if k.required}
    for family in sorted(families, key=lambda f: (f not in required, f)):
        models = repo.available_models({family})
        try:
            for model in models:
                backend.load(model)
        except ModelError as exc:
            if family in required:
                raise
            # Segmentation works without the optional models: serve without them, say why.
            log.warning("%s failed to load (%s); serving without it", family, exc)
            missing[_CAPABILITY.get(family, family)] = (
                f"CLIP failed to load: {exc}"
                if family == "clip"
                else f"{family} models failed to load: {exc}"
            )
            for model in models:
                backend.unload(model)
    loaded = build_pipeline(backend, repo, cfg, metrics, missing)
    for what in ("depth", "text"):
        if not loaded.capabilities.serves(what):
            log.warning("serving without %s: %s", what, loaded.capabilities.why_not(what))
    return loaded


def build_pipeline(
    backend: Backend,
    repo: ModelRepository,
    cfg: ServerConfig,
    metrics: Metrics | None = None,
    missing: dict[str, str] | None = None,
) -> Loaded:
    """Scheduler + pipeline over a loaded backend: one scheduler stage per model the backend loaded.
    ``missing``: families the caller already knows are not served, with the reason. Sets the
    process's BLAS threads (:func:`limit_blas`)."""
    limit_blas(cfg.blas_threads)
    missing = dict(missing or {})
    loaded = set(backend.loaded())

    def has(family: str) -> bool:
        return all(k.model in loaded for k in kinds.all_kinds() if k.family == family)

    stages = {s: c for s, c in cfg.stage_configs().items() if kinds.get(s).model in loaded}
    # the interactive lane (a worker for interactive items alone) where concurrent runs of one model
    # are safe: ONNX Runtime sessions (compiled torch graphs and CUDA graphs are not). On the CPU it
    # has sessions of its own for the models a click runs, and batch work runs at a lower priority.
    lane = cfg.backend == "onnxruntime" and cfg.interactive_lane
    twin = getattr(backend, "interactive_twin", None) if lane else None
    lane_backend = twin([kinds.get(s).model for s in stages if kinds.get(s).clicks]) if twin else None
    scheduler = Scheduler(backend, stages, metrics, batching=cfg.batching,
                          workers=cfg.worker_groups(list(stages)), aging_s=cfg.priority_aging_s,
                          interactive_lane=lane, lane_backend=lane_backend,
                          worker_nice=BATCH_NICE if lane_backend is not None else 0)  # fmt: skip
    tokenizer = None
    if "labels" not in missing:
        if not (has("clip") and repo.has_clip):
            missing["labels"] = "CLIP models not loaded"
        else:
            try:
                tokenizer = ClipTokenizer(repo.tokenizer_path(), repo.clip["context_length"])
            except Exception as exc:
                missing["labels"] = f"CLIP tokenizer failed to load: {exc}"
    for what in ("depth", "text", "tracking"):
        if what not in missing and not has(_FAMILY[what]):
            missing[what] = f"no {_FAMILY[what]} models in {repo.root} ({HINTS[what]})"
    ocr = None
    if "text" not in missing:
        try:
            ocr = OcrEngine(repo, scheduler)
        except Exception as exc:  # rapidocr missing or incompatible: serve without OCR, say why
            missing["text"] = f"OCR failed to start: {exc}"
    embeddings = EmbeddingCache(cfg.embedding_cache_mb << 20, metrics) if cfg.embedding_cache_mb > 0 else None
    parts = PipelineParts(
        sam=repo.sam2,
        scheduler=scheduler,
        clip=repo.clip if tokenizer is not None else None,
        tokenizer=tokenizer,
        depth=repo.manifest.get("depth") if "depth" not in missing else None,
        ocr=ocr,
        embeddings=embeddings,
        device_ops=backend.device_ops(),
        multi_image="multi_image" in backend.capabilities,
        upsample_on_backend=backend.upsample_masks,
        clip_model=clip_model_id(repo.clip) if tokenizer is not None else "",
    )
    pipeline = Pipeline(
        cfg.pipeline, parts, cfg.cpu_threads or (os.cpu_count() or 2), max(2, cfg.max_inflight)
    )
    return Loaded(cfg, repo, backend, pipeline, Capabilities(missing), embeddings)
