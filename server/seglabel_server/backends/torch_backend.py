"""PyTorch reference backend: sam2's and open_clip's own modules, wrapped exactly as exported.
CPU or CUDA; fp32, or fp16/bf16 autocast on CUDA. Needs torch, sam2 and open_clip (the export
extra). Each model's module comes from its kind's ``torch_builder``; outputs stay on the device
until :meth:`to_host`."""

from __future__ import annotations

import contextlib
import importlib
import inspect
from typing import Any

import numpy as np

from seglabel_server import kinds
from seglabel_server.backends.base import Backend, BackendInfo
from seglabel_server.errors import ModelError
from seglabel_server.repository import ModelRepository

DTYPES = ("fp32", "fp16", "bf16")


def _builder(spec):
    if callable(spec):
        return spec
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


class TorchBackend(Backend):
    def __init__(self, repo: ModelRepository, device: str = "cpu", precision: str = "fp32"):
        try:
            import torch
        except ImportError as exc:
            raise ModelError(f"torch backend needs torch (the export extra): {exc}") from exc
        if precision not in DTYPES:
            raise ModelError(f"torch backend: precision {precision!r} not in {DTYPES}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelError("torch backend: CUDA requested but torch.cuda.is_available() is False")
        if precision != "fp32" and not device.startswith("cuda"):
            raise ModelError("torch backend: fp16/bf16 need --device cuda")
        self.torch = torch
        self.repo = repo
        self.device = torch.device(device)
        self.mods: dict[str, Any] = {}
        self._inputs: dict[str, list[str]] = {}
        self._shared: dict = {}  # networks shared by several models (SAM2's encoder and decoder)
        self.amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.info = BackendInfo(
            name="torch",
            device=str(self.device),
            providers=[f"torch {torch.__version__}"],
            precision=precision,
        )

    def load(self, model: str) -> None:
        kind = kinds.for_model(model)
        if kind.torch_builder is None:
            raise ModelError(f"torch backend: model kind {kind.name!r} has no torch_builder")
        try:
            mod = _builder(kind.torch_builder)(self.repo.manifest, str(self.device), self._shared)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"torch backend: cannot build {model}: {exc}") from exc
        self.mods[model] = mod.to(self.device).eval()
        self._inputs[model] = list(
            getattr(mod, "input_names", None) or inspect.signature(mod.forward).parameters
        )

    def unload(self, model: str) -> None:
        self.mods.pop(model, None)

    def loaded(self) -> list[str]:
        return list(self.mods)

    def _ctx(self):
        ctx = contextlib.ExitStack()
        ctx.enter_context(self.torch.inference_mode())
        if self.amp is not None:
            ctx.enter_context(self.torch.autocast(self.device.type, dtype=self.amp))
        return ctx

    def _tensor(self, x):
        if isinstance(x, self.torch.Tensor):
            return x.to(self.device)
        return self.torch.from_numpy(np.ascontiguousarray(x)).to(self.device, non_blocking=True)

    def run(self, model: str, feeds: dict[str, Any]) -> dict[str, Any]:
        mod = self.mods.get(model)
        if mod is None:
            raise ModelError(f"{model} is not loaded")
        missing = [n for n in self._inputs[model] if n not in feeds]
        if missing:
            raise ModelError(f"{model}: missing inputs {', '.join(missing)}")
        with self._ctx():
            outs = mod(*[self._tensor(feeds[n]) for n in self._inputs[model]])
        outs = outs if isinstance(outs, tuple) else (outs,)
        return dict(zip(mod.output_names, outs))

    def to_host(self, x) -> np.ndarray:
        if isinstance(x, self.torch.Tensor):
            x = x.detach()
            return (x.float() if x.is_floating_point() else x).cpu().numpy()
        return np.asarray(x)

    def upsample_masks(self, logits: np.ndarray, hw: tuple[int, int], threshold: float) -> np.ndarray | None:
        if self.device.type != "cuda":
            return None  # the pipeline's region-restricted numpy upsampler is faster on the CPU
        import torch.nn.functional as F

        with self.torch.inference_mode():
            x = self._tensor(np.ascontiguousarray(logits, np.float32))[:, None]
            out = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)[:, 0] > threshold
            return out.cpu().numpy()
