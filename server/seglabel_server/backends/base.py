"""The one backend interface: four array-in / array-out calls on one runtime.

Image features stay in the backend's own memory (a GPU tensor, a numpy array) as an opaque
:class:`ImageFeatures`; decoder mask logits come back as :class:`MaskLogits`, which only copies the
masks the pipeline asks for (the survivors of filtering) to host memory.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class ImageFeatures:
    """One image's encoder outputs, in the backend's memory (arrays of batch 1)."""

    arrays: dict[str, Any]


def split_features(image_embed, high_res_feats_0, high_res_feats_1) -> list[ImageFeatures]:
    """Encoder outputs of a batch -> one ImageFeatures (batch-1 slices, no copies) per image."""
    return [
        ImageFeatures(
            {
                "image_embed": image_embed[i : i + 1],
                "high_res_feats_0": high_res_feats_0[i : i + 1],
                "high_res_feats_1": high_res_feats_1[i : i + 1],
            }
        )
        for i in range(image_embed.shape[0])
    ]


class MaskLogits:
    """[N, K, L, L] low-res logits; ``take`` copies selected (prompt, mask) pairs to numpy."""

    def __init__(self, data: Any):
        self.data = data

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def slice(self, start: int, stop: int) -> MaskLogits:
        return type(self)(self.data[start:stop])

    def take(self, prompt_idx: np.ndarray, mask_idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.data[prompt_idx, mask_idx], dtype=np.float32)

    def numpy(self) -> np.ndarray:
        return np.asarray(self.data, dtype=np.float32)


@dataclass
class DecoderOutput:
    """Every prompt's 3 multimask IoUs; for the prompts ``kept`` (best IoU above the call's
    ``min_iou``, ascending indices): the 3 candidates and sam2's single-mask answer."""

    iou: np.ndarray  # [N,3]
    kept: np.ndarray  # [M] int64, indices into the N prompts
    masks: MaskLogits  # [M,3,L,L]
    stability: np.ndarray  # [M,3], on the low-res logits
    single_mask: MaskLogits  # [M,1,L,L]
    single_iou: np.ndarray  # [M,1]

    def slice(self, start: int, stop: int) -> DecoderOutput:
        """Prompts [start, stop) of this call, re-indexed from 0."""
        a, b = (int(i) for i in np.searchsorted(self.kept, [start, stop]))
        return DecoderOutput(
            self.iou[start:stop],
            self.kept[a:b] - start,
            self.masks.slice(a, b),
            self.stability[a:b],
            self.single_mask.slice(a, b),
            self.single_iou[a:b],
        )


@dataclass
class BackendInfo:
    name: str
    device: str
    providers: list[str] = field(default_factory=list)
    precision: str = "fp32"


class Backend(ABC):
    """Runs the exported models. Implementations: onnxruntime (default), torch (reference), tensorrt."""

    info: BackendInfo
    has_clip: bool

    @abstractmethod
    def encode_images(self, images: np.ndarray) -> list[ImageFeatures]:
        """[B,3,S,S] float32 (resized, normalised) -> one ImageFeatures per image."""

    @abstractmethod
    def decode(
        self,
        features: ImageFeatures,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        min_iou: float = float("-inf"),
    ) -> DecoderOutput:
        """N prompts [N,P,2] (model-frame pixels) / [N,P] int32 labels against one image's features;
        masks only for the prompts whose best multimask IoU is above ``min_iou``."""

    @abstractmethod
    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        """CLIP crops [B,3,224,224] -> L2-normalised [B,D] float32."""

    @abstractmethod
    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        """Token ids [B,77] int32 -> L2-normalised [B,D] float32."""

    def upsample_masks(self, logits: np.ndarray, hw: tuple[int, int], threshold: float) -> np.ndarray | None:
        """Optional: [K,L,L] logits -> [K,H,W] bool (bilinear, align_corners=False, > threshold) on the
        backend's device. None: the pipeline upsamples on the CPU."""
        return None

    def close(self) -> None:  # pragma: no cover - trivial
        pass
