"""OCR: rapidocr's pipeline (resize, detection post-processing, line sorting and cropping, orientation,
CTC decoding: its own code, unchanged) with its three model calls sent through the scheduler, so
they queue, batch across requests, obey limits and cancellation, and run on the server's backend
from the repository's copy of the graphs (``seglabel-export`` puts them there).

rapidocr calls its models synchronously; :meth:`OcrEngine.read` runs in a thread of its own pool
and waits on the scheduler's futures, so a long OCR never holds the pipeline's CPU threads.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass

import numpy as np

from seglabel_server.errors import CapabilityUnavailable
from seglabel_server.types import RequestContext


@dataclass
class TextLine:
    text: str
    confidence: float
    box: list[tuple[float, float]]  # 4 corners, clockwise from top-left, original pixels


class _Stage:
    """Stands in for rapidocr's ONNX Runtime session: ``session(x)[0]`` -> the stage's output."""

    def __init__(self, engine: OcrEngine, stage: str):
        self.engine, self.stage = engine, stage

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        ctx = self.engine.local.ctx
        fut = self.engine.scheduler.submit(self.stage, np.ascontiguousarray(x, np.float32), ctx)
        return [fut.result()]


class OcrEngine:
    def __init__(self, repo, scheduler):
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise CapabilityUnavailable(f"OCR needs rapidocr_onnxruntime ({exc})") from exc
        self.scheduler = scheduler
        self.local = threading.local()
        paths = {f"{s}_model_path": str(repo.model_path(f"ocr_{s}")) for s in ("det", "cls", "rec")}
        # rapidocr opens its own sessions on these files (to read the recogniser's character list);
        # they are replaced by the scheduler's stages below and freed.
        self.ocr = RapidOCR(**paths)
        self.ocr.text_det.infer = _Stage(self, "ocr_det")
        self.ocr.text_cls.infer = _Stage(self, "ocr_cls")
        self.ocr.text_rec.session = _Stage(self, "ocr_rec")

    def _engine(self, box_thresh: float, min_confidence: float):
        """rapidocr with this call's thresholds: shallow copies of the objects that hold them
        (rapidocr sets them on the shared objects otherwise, which concurrent requests would see)."""
        ocr = copy.copy(self.ocr)
        ocr.text_det = copy.copy(self.ocr.text_det)
        ocr.text_det.postprocess_op = copy.copy(self.ocr.text_det.postprocess_op)
        ocr.text_det.postprocess_op.box_thresh = box_thresh
        ocr.text_score = min_confidence
        return ocr

    def read(
        self, image_rgb: np.ndarray, ctx: RequestContext, box_thresh: float = 0.5, min_confidence: float = 0.5
    ) -> list[TextLine]:
        """Text lines of an RGB image in rapidocr's reading order (top to bottom, left to right)."""
        ctx.check()
        self.local.ctx = ctx
        try:
            # rapidocr reads BGR
            result, _ = self._engine(box_thresh, min_confidence)(np.ascontiguousarray(image_rgb[:, :, ::-1]))
        finally:
            self.local.ctx = None
        lines = []
        for box, text, score in result or []:
            lines.append(TextLine(str(text), float(score), [(float(x), float(y)) for x, y in box]))
        return lines
