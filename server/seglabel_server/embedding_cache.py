"""Image embeddings kept between requests: the SAM2 encoder's outputs for an image, keyed by the
sha256 of its bytes (an upload's file_id), least recently used dropped past a byte budget. A POINTS
or BOX click, or a re-segmentation, of an image already seen skips the encoder. The arrays stay where
the backend left them (host memory for ONNX Runtime, the GPU for torch)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from seglabel_server.kinds.sam2 import ImageFeatures


def nbytes(x) -> int:
    n = getattr(x, "nbytes", None)
    return int(n) if n is not None else int(x.numel() * x.element_size())


def _own(x):
    """``x`` without the rest of the batch it may be a view of (an encoder batch of several images)."""
    if isinstance(x, np.ndarray):
        return x.copy() if x.base is not None and nbytes(x.base) > nbytes(x) else x
    storage = getattr(x, "untyped_storage", None)
    if storage is not None and storage().nbytes() > nbytes(x):
        return x.clone()
    return x


class EmbeddingCache:
    def __init__(self, max_bytes: int, metrics=None):
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.items: OrderedDict[str, tuple[ImageFeatures, int]] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def get(self, key: str) -> ImageFeatures | None:
        with self.lock:
            entry = self.items.get(key)
            if entry is not None:
                self.items.move_to_end(key)
        if self.metrics is not None:
            (self.metrics.embedding_hits if entry is not None else self.metrics.embedding_misses).inc()
        return entry[0] if entry is not None else None

    def put(self, key: str, features: ImageFeatures) -> None:
        owned = ImageFeatures({k: _own(v) for k, v in features.arrays.items()})
        size = sum(nbytes(v) for v in owned.arrays.values())
        if size > self.max_bytes:
            return
        with self.lock:
            old = self.items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self.items[key] = (owned, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, n) = self.items.popitem(last=False)
                self.bytes -= n

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.bytes = 0
