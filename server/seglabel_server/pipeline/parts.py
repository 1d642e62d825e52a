"""What the pipeline is built from, and one request's state while it runs."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from seglabel_server.backends.base import DeviceMaskOps
from seglabel_server.models.tokenizer import ClipTokenizer
from seglabel_server.pipeline.ocr import OcrEngine
from seglabel_server.scheduler import Scheduler
from seglabel_server.types import RequestContext, SegmentJob

Emit = Callable[[object], Awaitable[None]]


@dataclass
class PipelineParts:
    """What the pipeline runs with, assembled once when the models load (``service.loading``).
    A family that is not served is None: CLIP (``clip`` / ``tokenizer``), ``depth``, ``ocr``."""

    sam: dict  # the repository's sam2 section
    scheduler: Scheduler
    clip: dict | None = None  # the repository's clip section
    tokenizer: ClipTokenizer | None = None
    depth: dict | None = None  # the repository's depth section
    ocr: OcrEngine | None = None
    embeddings: Any = None  # storage.EmbeddingCache, owned by the service
    device_ops: DeviceMaskOps | None = None  # Backend.device_ops(): per-mask kernels in its memory
    multi_image: bool = False  # decoder calls may mix images
    upsample_on_backend: Callable | None = None  # Backend.upsample_masks
    answers: Any = None  # storage.AnswerCache: labelled answers kept for Relabel, owned by the service
    clip_model: str = ""  # "<architecture>@<sha256 prefix>": what vocabularies record


class Stopwatch:
    """A request's stage timings (ms): each :meth:`mark` charges the time since the previous one."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.start = self.last = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + (now - self.last) * 1000.0
        self.last = now

    def total(self) -> float:
        return (time.perf_counter() - self.start) * 1000.0


@dataclass
class RequestState:
    """One request's state while it runs."""

    job: SegmentJob
    image: np.ndarray
    ctx: RequestContext
    emit: Emit | None
    clock: Stopwatch = field(default_factory=Stopwatch)
    image_dev: Any = None  # the image in the backend's memory (device path), uploaded once
    crop_source: Any = None  # models.images.CropSource of the image (host path's crops), made once
    embeddings: list = field(default_factory=list)  # crop embeddings per chunk, when answers are kept

    @property
    def hw(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    async def send(self, event) -> None:
        if self.emit is not None:
            await self.emit(event)
