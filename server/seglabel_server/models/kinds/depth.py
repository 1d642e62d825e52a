"""Depth Anything V2's kind: images [B,3,S,S] -> relative inverse depth [B,S,S] (larger is nearer).
Images batch by stacking; each request gets its own [S,S] map back. Its priority is below every
stage of the masks and labels (and OCR's below it): a Segment with ``with_depth`` gets its masks and
labels first, its depth in the gaps and after."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from seglabel_server.models.kinds.base import Feeds, ModelKind, stack


class DepthKind(ModelKind):
    def size(self, payload) -> int:
        return 1

    def collate(self, payloads: Sequence[np.ndarray]) -> Feeds:
        return {"images": stack(payloads)}

    def split(self, outputs: Feeds, payloads, to_host) -> list[np.ndarray]:
        out = np.asarray(to_host(outputs["depth"]), np.float32)
        return [out[i] for i in range(len(payloads))]


DEPTH = DepthKind(
    name="depth",
    model="depth_estimator",
    family="depth",
    inputs=("images",),
    outputs=("depth",),
    max_batch=2,
    max_batch_gpu=16,
    priority=45,
    torch_builder="seglabel_server.models.torch_modules.build:depth_estimator",
    description="Depth Anything V2: images [B,3,S,S] -> relative inverse depth [B,S,S]",
)

KINDS = (DEPTH,)
