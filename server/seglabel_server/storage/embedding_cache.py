"""Image embeddings kept between requests: the SAM2 encoder's outputs for an image, keyed by the
sha256 of its bytes (an upload's file_id), least recently used dropped past a byte budget. A POINTS
or BOX click, or a re-segmentation, of an image already seen skips the encoder. The arrays stay where
the backend left them (host memory for ONNX Runtime, the GPU for torch). The decoded image is kept
beside them (read-only, in the same byte budget) when it is at most an eighth of the budget, so a
click does not decode the file again either."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from seglabel_server.models.kinds.sam2 import ImageFeatures


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
        # (key, "features" | "image") -> (value, bytes); one LRU order and one budget for both
        self.items: OrderedDict[tuple[str, str], tuple[object, int]] = OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    def _get(self, key: tuple[str, str]):
        with self.lock:
            entry = self.items.get(key)
            if entry is not None:
                self.items.move_to_end(key)
        return entry[0] if entry is not None else None

    def _put(self, key: tuple[str, str], value, size: int) -> None:
        if size > self.max_bytes:
            return
        with self.lock:
            old = self.items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self.items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, n) = self.items.popitem(last=False)
                self.bytes -= n

    def get(self, key: str) -> ImageFeatures | None:
        features = self._get((key, "features"))
        if self.metrics is not None:
            (self.metrics.embedding_hits if features is not None else self.metrics.embedding_misses).inc()
        return features

    def put(self, key: str, features: ImageFeatures) -> None:
        owned = ImageFeatures({k: _own(v) for k, v in features.arrays.items()})
        self._put((key, "features"), owned, sum(nbytes(v) for v in owned.arrays.values()))

    def image(self, key: str) -> np.ndarray | None:
        """The decoded image of ``key`` (read-only), when kept."""
        return self._get((key, "image"))

    def put_image(self, key: str, image: np.ndarray) -> None:
        if image.nbytes * 8 > self.max_bytes:
            return
        kept = image.copy() if image.base is not None else image
        kept.flags.writeable = False
        self._put((key, "image"), kept, kept.nbytes)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.bytes = 0
