"""SAM2.1's two kinds: the image encoder (images -> features that stay in the backend's memory)
and the prompt decoder (one image's features + N prompts -> IoUs, kept prompts, low-res masks)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seglabel_server.models.kinds.base import Feeds, ModelKind, concat, stack

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
    # The same outputs left in the backend's memory (iou, kept, stability, single_iou), when the
    # backend keeps them off the host: the device mask path filters there.
    dev: dict[str, Any] | None = None

    def slice(self, start: int, stop: int) -> DecoderOutput:
        """Prompts [start, stop) of this call, re-indexed from 0."""
        a, b = (int(i) for i in np.searchsorted(self.kept, [start, stop]))
        dev = None
        if self.dev is not None:
            d = self.dev
            dev = {
                "iou": d["iou"][start:stop],
                "kept": d["kept"][a:b] - start,
                "stability": d["stability"][a:b],
                "single_iou": d["single_iou"][a:b],
            }
        return DecoderOutput(
            self.iou[start:stop],
            self.kept[a:b] - start,
            self.masks.slice(a, b),
            self.stability[a:b],
            self.single_mask.slice(a, b),
            self.single_iou[a:b],
            dev,
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
    # The backend's decoder takes prompts of several images in one call (features stacked, one
    # image index per prompt): requests on different images then share decoder batches.
    multi_image: bool = False

    def __len__(self) -> int:
        return len(self.coords)


class EncoderKind(ModelKind):
    def collate(self, payloads: Sequence[np.ndarray]) -> Feeds:
        return {"images": stack(payloads)}

    def size(self, payload) -> int:
        return 1

    def split(self, outputs: Feeds, payloads, to_host) -> list[ImageFeatures]:
        """Batch-1 slices (no copies) per image, left in the backend's memory."""
        n = outputs[ENCODER_OUTPUTS[0]].shape[0]
        return [ImageFeatures({k: outputs[k][i : i + 1] for k in ENCODER_OUTPUTS}) for i in range(n)]


_DEVICE_OUTPUTS = {
    "iou": "iou_predictions",
    "kept": "kept",
    "stability": "stability_scores",
    "single_iou": "single_iou",
}


class DecoderKind(ModelKind):
    def key(self, payload: DecodeRequest) -> Hashable:
        # A batch shares the points per prompt and the IoU threshold; the graph broadcasts one
        # image's features over the prompts, so it also shares the image unless the backend's
        # decoder takes several (``multi_image``).
        if payload.multi_image:
            return ("multi", payload.coords.shape[1], payload.min_iou)
        return (id(payload.features), payload.coords.shape[1], payload.min_iou)

    def collate(self, payloads: Sequence[DecodeRequest]) -> Feeds:
        first = payloads[0]
        if any(p.min_iou != first.min_iou or p.multi_image != first.multi_image for p in payloads):
            raise RuntimeError("decoder batch mixes min_iou or layouts")
        feeds = {
            "point_coords": np.concatenate([p.coords for p in payloads]),
            "point_labels": np.concatenate([p.labels for p in payloads]),
            "min_iou": np.array([first.min_iou], np.float32),
        }
        if not first.multi_image:
            if any(p.features is not first.features for p in payloads):
                raise RuntimeError("decoder batch mixes images")
            return {**first.features.arrays, **feeds}
        rows: dict[int, int] = {}  # id(features) -> its row of the stacked features
        images, index = [], []
        for p in payloads:
            if id(p.features) not in rows:
                rows[id(p.features)] = len(images)
                images.append(p.features)
            index.append(np.full(len(p), rows[id(p.features)], np.int64))
        arrays = {k: concat([f.arrays[k] for f in images]) for k in ENCODER_OUTPUTS}
        return {**arrays, **feeds, "image_index": np.concatenate(index)}

    def split(self, outputs: Feeds, payloads, to_host) -> list[DecoderOutput]:
        whole = DecoderOutput(
            iou=np.asarray(to_host(outputs["iou_predictions"]), np.float32),
            kept=np.asarray(to_host(outputs["kept"]), np.int64),
            masks=MaskLogits(outputs["masks"], to_host),
            stability=np.asarray(to_host(outputs["stability_scores"]), np.float32),
            single_mask=MaskLogits(outputs["single_mask"], to_host),
            single_iou=np.asarray(to_host(outputs["single_iou"]), np.float32),
        )
        if hasattr(outputs["masks"], "is_cuda"):  # torch tensors: the device mask path filters on them
            whole.dev = {k: outputs[n] for k, n in _DEVICE_OUTPUTS.items()}
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
    torch_builder="seglabel_server.models.torch_modules.build:sam2_image_encoder",
    description="SAM2.1 image encoder: images [B,3,S,S] -> image features",
)

DECODER = DecoderKind(
    name="decoder",
    model="sam2_mask_decoder",
    family="sam2",
    inputs=("image_embed", "high_res_feats_0", "high_res_feats_1", "point_coords", "point_labels", "min_iou"),
    outputs=("iou_predictions", "kept", "masks", "stability_scores", "single_mask", "single_iou"),
    # ONNX Runtime on the CPU: the same time per prompt at 16-128 (measured: 0.35 s per 16, 0.63-0.69 s
    # per 32, full-size, 2 cores) while its working memory grows ~32 MB per prompt (513 MB at 16, 1056
    # MB at 32): 16 keeps it under the encoder's 725 MB. A GPU takes bigger batches.
    max_batch=16,
    max_batch_gpu=128,
    priority=30,
    required=True,
    clicks=True,
    torch_builder="seglabel_server.models.torch_modules.build:sam2_mask_decoder",
    torch_variants={
        "multi_image": "seglabel_server.models.torch_modules.build:sam2_mask_decoder_multi_image"
    },
    description="SAM2.1 prompt encoder + mask decoder: N prompts against one image",
)

KINDS = (ENCODER, DECODER)


def encode(backend, images: np.ndarray) -> list[ImageFeatures]:
    """Images [B,3,S,S] through the encoder directly (no scheduler): tools, tests, benchmarks."""
    return ENCODER.execute(backend, list(images))


def decode(backend, features: ImageFeatures, coords, labels, min_iou: float = float("-inf")) -> DecoderOutput:
    """One decoder call directly (no scheduler): tools, tests, benchmarks."""
    return DECODER.execute(backend, [DecodeRequest(features, coords, labels, min_iou)])[0]
