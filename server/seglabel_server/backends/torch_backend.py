"""PyTorch reference backend: sam2's and open_clip's own modules, wrapped exactly as exported.
CPU or CUDA; fp32, or fp16/bf16 autocast on CUDA. Needs the ``export`` extra (torch, sam2, open_clip)."""

from __future__ import annotations

import contextlib

import numpy as np

from seglabel_server.backends.base import (
    Backend,
    BackendInfo,
    DecoderOutput,
    ImageFeatures,
    MaskLogits,
    split_features,
)
from seglabel_server.errors import ModelError
from seglabel_server.repository import ModelRepository

DTYPES = ("fp32", "fp16", "bf16")


class TorchMaskLogits(MaskLogits):
    def take(self, prompt_idx, mask_idx):
        import torch

        p = torch.as_tensor(np.asarray(prompt_idx), device=self.data.device, dtype=torch.long)
        m = torch.as_tensor(np.asarray(mask_idx), device=self.data.device, dtype=torch.long)
        return self.data[p, m].float().cpu().numpy()

    def numpy(self):
        return self.data.float().cpu().numpy()


class TorchBackend(Backend):
    def __init__(
        self, repo: ModelRepository, device: str = "cpu", precision: str = "fp32", load_clip: bool = True
    ):
        try:
            import torch
            from seglabel_export.wrappers import build_modules
        except ImportError as exc:
            raise ModelError(f"torch backend needs the export extra (torch, sam2, open_clip): {exc}") from exc
        if precision not in DTYPES:
            raise ModelError(f"torch backend: precision {precision!r} not in {DTYPES}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError("torch backend: CUDA requested but torch.cuda.is_available() is False")
        if precision != "fp32" and not device.startswith("cuda"):
            raise ModelError("torch backend: fp16/bf16 need --device cuda")
        self.torch = torch
        self.device = torch.device(device)
        manifest = dict(repo.manifest)
        if not load_clip:
            manifest["clip"] = None
        try:
            self.mods = build_modules(manifest, device)
        except Exception as exc:
            raise ModelError(f"torch backend: cannot build models: {exc}") from exc
        self.has_clip = "clip_image_encoder" in self.mods
        self.amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.info = BackendInfo(
            name="torch",
            device=str(self.device),
            providers=[f"torch {torch.__version__}"],
            precision=precision,
        )

    def _ctx(self):
        ctx = contextlib.ExitStack()
        ctx.enter_context(self.torch.inference_mode())
        if self.amp is not None:
            ctx.enter_context(self.torch.autocast(self.device.type, dtype=self.amp))
        return ctx

    def _tensor(self, x: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True)

    def encode_images(self, images: np.ndarray) -> list[ImageFeatures]:
        with self._ctx():
            emb, f0, f1 = self.mods["sam2_image_encoder"](self._tensor(images.astype(np.float32)))
        return split_features(emb, f0, f1)

    def decode(
        self, features: ImageFeatures, point_coords, point_labels, min_iou=float("-inf")
    ) -> DecoderOutput:
        feats = [features.arrays[k] for k in ("image_embed", "high_res_feats_0", "high_res_feats_1")]
        with self._ctx():
            iou, kept, masks, stab, single, single_iou = self.mods["sam2_mask_decoder"](
                *feats,
                self._tensor(point_coords.astype(np.float32)),
                self._tensor(point_labels.astype(np.int32)),
                self._tensor(np.array([min_iou], np.float32)),
            )
        iou, stab, single_iou = (t.float().cpu().numpy() for t in (iou, stab, single_iou))
        kept = kept.cpu().numpy()
        return DecoderOutput(iou, kept, TorchMaskLogits(masks), stab, TorchMaskLogits(single), single_iou)

    def upsample_masks(self, logits: np.ndarray, hw: tuple[int, int], threshold: float) -> np.ndarray | None:
        if self.device.type != "cuda":
            return None  # the pipeline's region-restricted numpy upsampler is faster on the CPU
        import torch.nn.functional as F

        with self.torch.inference_mode():
            x = self._tensor(np.ascontiguousarray(logits, np.float32))[:, None]
            out = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)[:, 0] > threshold
            return out.cpu().numpy()

    def embed_images(self, pixels: np.ndarray) -> np.ndarray:
        with self._ctx():
            out = self.mods["clip_image_encoder"](self._tensor(pixels.astype(np.float32)))
        return out.float().cpu().numpy()

    def embed_texts(self, input_ids: np.ndarray) -> np.ndarray:
        with self._ctx():
            out = self.mods["clip_text_encoder"](self._tensor(input_ids.astype(np.int32)))
        return out.float().cpu().numpy()
