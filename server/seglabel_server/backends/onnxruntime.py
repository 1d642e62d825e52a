"""ONNX Runtime backend: the embedded default (CPU), CUDA / TensorRT execution providers with
onnxruntime-gpu. Reports the providers each session actually got: a silent CPU fallback is an error
unless the CPU was asked for."""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from seglabel_server.backends.base import (
    Backend,
    BackendInfo,
    DecoderOutput,
    ImageFeatures,
    MaskLogits,
    split_features,
)
from seglabel_server.errors import ModelError
from seglabel_server.repository import CLIP_MODELS, ModelRepository

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeBackend(Backend):
    def __init__(self, repo: ModelRepository, device: str = "cpu", threads: int = 0, load_clip: bool = True):
        if device not in PROVIDERS:
            raise ModelError(f"onnxruntime: unknown device {device!r} (cpu, cuda, tensorrt)")
        wanted = PROVIDERS[device]
        available = ort.get_available_providers()
        if wanted[0] not in available:
            raise ModelError(
                f"onnxruntime: {wanted[0]} is not available (installed providers: {available}); "
                "install onnxruntime-gpu or use --device cpu"
            )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        self.sessions: dict[str, ort.InferenceSession] = {}
        names = ["sam2_image_encoder", "sam2_mask_decoder"] + (
            list(CLIP_MODELS) if load_clip and repo.has_clip else []
        )
        used: list[str] = []
        for name in names:
            try:
                sess = ort.InferenceSession(str(repo.model_path(name)), opts, providers=wanted)
            except ModelError:
                raise
            except Exception as exc:
                raise ModelError(f"onnxruntime: cannot load {name}: {exc}") from exc
            got = sess.get_providers()
            if got[0] != wanted[0]:
                raise ModelError(
                    f"onnxruntime: {name} fell back to {got[0]} although {wanted[0]} was asked for"
                )
            used += [p for p in got[:1] if p not in used]
            self.sessions[name] = sess
        self.has_clip = all(n in self.sessions for n in CLIP_MODELS)
        self.info = BackendInfo(name="onnxruntime", device=device, providers=used, precision="fp32")

    def _run(self, name: str, feeds: dict) -> list[np.ndarray]:
        return self.sessions[name].run(None, feeds)

    def encode_images(self, images: np.ndarray) -> list[ImageFeatures]:
        emb, f0, f1 = self._run("sam2_image_encoder", {"images": np.ascontiguousarray(images, np.float32)})
        return split_features(emb, f0, f1)

    def decode(
        self, features: ImageFeatures, point_coords, point_labels, min_iou=float("-inf")
    ) -> DecoderOutput:
        feeds = dict(features.arrays)
        feeds["point_coords"] = np.ascontiguousarray(point_coords, np.float32)
        feeds["point_labels"] = np.ascontiguousarray(point_labels, np.int32)
        feeds["min_iou"] = np.array([min_iou], np.float32)
        iou, kept, masks, stab, single, single_iou = self._run("sam2_mask_decoder", feeds)
        return DecoderOutput(iou, kept, MaskLogits(masks), stab, MaskLogits(single), single_iou)

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        return self._run("clip_image_encoder", {"pixel_values": np.ascontiguousarray(pixels, np.float32)})[0]

    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        return self._run("clip_text_encoder", {"input_ids": np.ascontiguousarray(input_ids, np.int32)})[0]
