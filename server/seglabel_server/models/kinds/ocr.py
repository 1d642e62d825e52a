"""rapidocr's three PP-OCR graphs as kinds: text detection (an image -> a probability map),
orientation (line crops -> 0/180 degrees) and recognition (line crops -> per-step character
probabilities). rapidocr's own code prepares their inputs and reads their outputs
(:mod:`seglabel_server.pipeline.ocr`); here they only queue, batch and run like every other model.

Each call's input is ``x`` [n,3,h,w]; calls of the same shape (from any request) share a batch.
The graphs' output names are rapidocr's (e.g. ``sigmoid_0.tmp_0``): the one output is taken by
position of the manifest, whatever its name. Priorities: below the masks, labels and depth;
recognition before detection, so that OCR already under way finishes first.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from seglabel_server.models.kinds.base import Feeds, ModelKind


class OcrKind(ModelKind):
    def key(self, payload: np.ndarray) -> Hashable:
        return tuple(payload.shape[1:])

    def split(self, outputs: Feeds, payloads, to_host) -> list:
        """The graph's one output (whatever rapidocr's export named it), cut back into each call's rows."""
        if len(outputs) != 1:
            raise RuntimeError(f"{self.name}: {self.model} returned {len(outputs)} outputs, expected 1")
        return self.rows(next(iter(outputs.values())), payloads, to_host)


_COMMON = dict(family="ocr", inputs=("x",), outputs=())

DET = OcrKind(name="ocr_det", model="ocr_det", max_batch=4, priority=48, description="PP-OCRv4 text detection: image [1,3,H,W] -> text probability map", **_COMMON)  # fmt: skip
CLS = OcrKind(name="ocr_cls", model="ocr_cls", max_batch=32, priority=47, description="PP-OCR line orientation: crops [n,3,48,192] -> 0/180 degrees", **_COMMON)  # fmt: skip
REC = OcrKind(name="ocr_rec", model="ocr_rec", max_batch=32, priority=46, description="PP-OCRv4 recognition: crops [n,3,48,W] -> character probabilities (CTC)", **_COMMON)  # fmt: skip

KINDS = (DET, CLS, REC)
