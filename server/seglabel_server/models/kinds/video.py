"""SAM2's video path as three kinds (issue 34), the ``sam2_video`` family: the memory conditioner,
the track decoder and the memory encoder (``torch_modules/video.py``). Each item is one frame's
objects of one tracking session; a batch joins items of several sessions (or frames): the frames'
encoder outputs are stacked once each and every object row says which one it reads (``rows``),
so no frame's features are copied per object. The frames' features come from the image path's
own encoder stage."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seglabel_server.models.kinds.base import Feeds, ModelKind, concat
from seglabel_server.models.kinds.sam2 import ImageFeatures


@dataclass
class ConditionRequest:
    """Tracked objects of one frame, each with its memory plan (padded to the item's longest)."""

    frame: ImageFeatures
    memory: np.ndarray  # [b, M, Cm, H, W]
    memory_tpos: np.ndarray  # [b, M] int64
    memory_valid: np.ndarray  # [b, M]
    ptrs: np.ndarray  # [b, N, C]
    ptr_pos: np.ndarray  # [b, N]
    ptr_valid: np.ndarray  # [b, N]

    def __len__(self) -> int:
        return len(self.memory)


@dataclass
class TrackDecodeRequest:
    """Objects of one frame with the same number of points: ``embed`` their conditioned features
    [b, C, H, W], or None for the frame's own (a first frame: SAM on it alone); ``masks`` their
    current low-res logits as the dense prompt (clicks that correct a mask), or None."""

    frame: ImageFeatures
    embed: Any | None
    coords: np.ndarray  # [b, P, 2]
    labels: np.ndarray  # [b, P] int32
    masks: np.ndarray | None = None  # [b, 1, 4H, 4W]

    def __len__(self) -> int:
        return len(self.coords)


@dataclass
class MemoryRequest:
    """One frame's chosen masks (low-resolution logits) into its objects' memory."""

    frame: ImageFeatures
    mask_logits: np.ndarray  # [b, 1, 4H, 4W]
    object_score: np.ndarray  # [b, 1]
    from_points: np.ndarray  # [b]

    def __len__(self) -> int:
        return len(self.mask_logits)


def _frames(payloads: Sequence[Any], names: tuple[str, ...]) -> Feeds:
    """Each distinct frame's arrays ``names`` stacked once, and ``rows``: each object's frame."""
    index: dict[int, int] = {}
    frames: list[ImageFeatures] = []
    rows = []
    for p in payloads:
        if id(p.frame) not in index:
            index[id(p.frame)] = len(frames)
            frames.append(p.frame)
        rows.append(np.full(len(p), index[id(p.frame)], np.int64))
    return {**{n: concat([f.arrays[n] for f in frames]) for n in names}, "rows": np.concatenate(rows)}


def _padded(arrays: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Arrays joined on axis 0, each padded with zeros on axis 1 to ``length``."""
    out = []
    for a in arrays:
        pad = [(0, 0)] * a.ndim
        pad[1] = (0, length - a.shape[1])
        out.append(np.pad(a, pad))
    return np.concatenate(out)


class ConditionerKind(ModelKind):
    def collate(self, payloads: Sequence[ConditionRequest]) -> Feeds:
        m = max(p.memory.shape[1] for p in payloads)
        n = max(p.ptrs.shape[1] for p in payloads)
        feeds = _frames(payloads, ("image_embed",))
        for name, length in (("memory", m), ("memory_tpos", m), ("memory_valid", m), ("ptrs", n),
                             ("ptr_pos", n), ("ptr_valid", n)):  # fmt: skip
            feeds[name] = _padded([getattr(p, name) for p in payloads], length)
        return feeds


class TrackDecoderKind(ModelKind):
    def key(self, payload: TrackDecodeRequest) -> Hashable:
        return payload.coords.shape[1]  # sam2's prompt encoder is not invariant to padding points

    def collate(self, payloads: Sequence[TrackDecodeRequest]) -> Feeds:
        feeds = _frames(payloads, ("high_res_feats_0", "high_res_feats_1"))
        embeds = [
            p.embed if p.embed is not None else concat([p.frame.arrays["image_embed"]] * len(p))
            for p in payloads
        ]
        low = 4 * payloads[0].frame.arrays["image_embed"].shape[-1]
        none = lambda p: np.zeros((len(p), 1, low, low), np.float32)  # noqa: E731
        return {
            **feeds,
            "image_embed": concat(embeds),
            "point_coords": np.concatenate([p.coords for p in payloads]).astype(np.float32),
            "point_labels": np.concatenate([p.labels for p in payloads]).astype(np.int32),
            "mask_input": np.concatenate([none(p) if p.masks is None else p.masks for p in payloads]).astype(np.float32),
            "has_mask": np.concatenate([np.full(len(p), float(p.masks is not None), np.float32) for p in payloads]),
        }  # fmt: skip

    def split(self, outputs: Feeds, payloads, to_host) -> list[tuple[np.ndarray, ...]]:
        parts = [self.rows(outputs[n], payloads, to_host) for n in self.outputs]
        return [tuple(np.asarray(p[i], np.float32) for p in parts) for i in range(len(payloads))]


class MemoryEncoderKind(ModelKind):
    def collate(self, payloads: Sequence[MemoryRequest]) -> Feeds:
        return {
            **_frames(payloads, ("image_embed",)),
            "mask_logits": np.concatenate([p.mask_logits for p in payloads]).astype(np.float32),
            "object_score": np.concatenate([p.object_score for p in payloads]).astype(np.float32),
            "from_points": np.concatenate([p.from_points for p in payloads]).astype(np.float32),
        }


BUILD = "seglabel_server.models.torch_modules.build"

CONDITIONER = ConditionerKind(
    name="track_condition",
    model="sam2_track_conditioner",
    family="sam2_video",
    inputs=("image_embed", "rows", "memory", "memory_tpos", "memory_valid", "ptrs", "ptr_pos", "ptr_valid"),
    outputs=("pix_feat_with_mem",),
    # ONNX Runtime on the CPU, full size, 7 memory frames: 1.9 s for one object, 8.9 s for three in
    # one call (its attention matrices, 4096 x 28,736 per object and layer, outgrow the caches).
    max_batch=1,
    max_batch_gpu=16,
    priority=35,
    torch_builder=f"{BUILD}:sam2_track_conditioner",
    description="SAM2.1 memory attention: tracked objects' frame features conditioned on their memory",
)

TRACK_DECODER = TrackDecoderKind(
    name="track_decode",
    model="sam2_track_decoder",
    family="sam2_video",
    inputs=(
        "image_embed",
        "high_res_feats_0",
        "high_res_feats_1",
        "rows",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask",
    ),  # fmt: skip
    outputs=("masks", "ious", "obj_ptrs", "object_score"),
    max_batch=16,
    max_batch_gpu=64,
    priority=34,
    torch_builder=f"{BUILD}:sam2_track_decoder",
    description="SAM2.1 mask decoder for tracking: every token's mask, IoU, object pointer; the object score",
)

MEMORY_ENCODER = MemoryEncoderKind(
    name="memory_encode",
    model="sam2_memory_encoder",
    family="sam2_video",
    inputs=("image_embed", "rows", "mask_logits", "object_score", "from_points"),
    outputs=("maskmem_features",),
    max_batch=8,
    max_batch_gpu=64,
    priority=33,
    torch_builder=f"{BUILD}:sam2_memory_encoder",
    description="SAM2.1 memory encoder: a frame's chosen masks into its objects' memory",
)

KINDS = (CONDITIONER, TRACK_DECODER, MEMORY_ENCODER)
