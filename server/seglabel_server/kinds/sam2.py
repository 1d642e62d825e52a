"""SAM2.1's two kinds: the image encoder (images -> features that stay in the backend's memory)
and the prompt decoder (one image's features + N prompts -> IoUs, kept prompts, low-res masks)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seglabel_server.kinds.base import Feeds, ModelKind

ENCODER_OUTPUTS = ("image_embed", "high_res_feats_0", "high_res_feats_1")


@dataclass
class ImageFeatures:
    """One image's encoder outputs, in the backend's memory (arrays of batch 1)."""

    arrays: dict[str, Any]


class MaskLogits:
    """[N, K, L, L] low-res logits in the backend's memory; ``take`` copies only the (prompt, mask)
    pairs the pipeline asks for (the survivors of filtering) to host memory."""

    def __init__(self, data: Any, to_host: Callable[[Any], np.ndarray] = np.asarray):
        self.data = data
        self.to_host = to_host

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def slice(self, start: int, stop: int) -> MaskLogits:
        return MaskLogits(self.data[start:stop], self.to_host)

    def take(self, prompt_idx: np.ndarray, mask_idx: np.ndarray) -> np.ndarray:
        return np.asarray(self.to_host(self.data[prompt_idx, mask_idx]), dtype=np.float32)

    def numpy(self) -> np.ndarray:
        return np.asarray(self.to_host(self.data), dtype=np.float32)


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
class DecodeRequest:
    """N prompts of P points against one image: coords [N,P,2] in model-input pixels, labels [N,P]
    int32 (1 fg, 0 bg, -1 padding, 2/3 box corners); masks only for prompts whose best multimask
    IoU is above ``min_iou``."""

    features: ImageFeatures
    coords: np.ndarray
    labels: np.ndarray
    min_iou: float = float("-inf")

    def __len__(self) -> int:
        return len(self.coords)


class EncoderKind(ModelKind):
    def collate(self, payloads: Sequence[np.ndarray]) -> Feeds:
        return {"images": np.stack(list(payloads))}

    def size(self, payload) -> int:
        return 1

    def split(self, outputs: Feeds, payloads, to_host) -> list[ImageFeatures]:
        """Batch-1 slices (no copies) per image, left in the backend's memory."""
        n = outputs[ENCODER_OUTPUTS[0]].shape[0]
        return [ImageFeatures({k: outputs[k][i : i + 1] for k in ENCODER_OUTPUTS}) for i in range(n)]


class DecoderKind(ModelKind):
    def key(self, payload: DecodeRequest) -> Hashable:
        # The graph broadcasts one image's features over the prompts: a batch shares the image,
        # the points per prompt and the IoU threshold.
        return (id(payload.features), payload.coords.shape[1], payload.min_iou)

    def collate(self, payloads: Sequence[DecodeRequest]) -> Feeds:
        first = payloads[0]
        if any(p.features is not first.features or p.min_iou != first.min_iou for p in payloads):
            raise RuntimeError("decoder batch mixes images or min_iou")
        return {
            **first.features.arrays,
            "point_coords": np.concatenate([p.coords for p in payloads]),
            "point_labels": np.concatenate([p.labels for p in payloads]),
            "min_iou": np.array([first.min_iou], np.float32),
        }

    def split(self, outputs: Feeds, payloads, to_host) -> list[DecoderOutput]:
        whole = DecoderOutput(
            iou=np.asarray(to_host(outputs["iou_predictions"]), np.float32),
            kept=np.asarray(to_host(outputs["kept"]), np.int64),
            masks=MaskLogits(outputs["masks"], to_host),
            stability=np.asarray(to_host(outputs["stability_scores"]), np.float32),
            single_mask=MaskLogits(outputs["single_mask"], to_host),
            single_iou=np.asarray(to_host(outputs["single_iou"]), np.float32),
        )
        results, start = [], 0
        for p in payloads:
            results.append(whole.slice(start, start + len(p)))
            start += len(p)
        return results


ENCODER = EncoderKind(
    name="encoder",
    model="sam2_image_encoder",
    family="sam2",
    inputs=("images",),
    outputs=ENCODER_OUTPUTS,
    max_batch=4,
    priority=40,
    required=True,
    torch_builder="seglabel_server.torch_models.build:sam2_image_encoder",
    description="SAM2.1 image encoder: images [B,3,S,S] -> image features",
)

DECODER = DecoderKind(
    name="decoder",
    model="sam2_mask_decoder",
    family="sam2",
    inputs=("image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels", "min_iou"),
    outputs=("iou_predictions", "kept", "masks", "stability_scores", "single_mask", "single_iou"),
    # ONNX Runtime on the CPU: the same time per prompt at 32-128 (measured) while the memory it
    # keeps grows ~45 MB per upscaled prompt; a GPU takes bigger batches.
    max_batch=32,
    max_batch_gpu=128,
    priority=30,
    required=True,
    torch_builder="seglabel_server.torch_models.build:sam2_mask_decoder",
    description="SAM2.1 prompt encoder + mask decoder: N prompts against one image",
)

KINDS = (ENCODER, DECODER)


def encode(backend, images: np.ndarray) -> list[ImageFeatures]:
    """Images [B,3,S,S] through the encoder directly (no scheduler): tools, tests, benchmarks."""
    return ENCODER.execute(backend, list(images))


def decode(backend, features: ImageFeatures, coords, labels, min_iou: float = float("-inf")) -> DecoderOutput:
    """One decoder call directly (no scheduler): tools, tests, benchmarks."""
    return DECODER.execute(backend, [DecodeRequest(features, coords, labels, min_iou)])[0]
