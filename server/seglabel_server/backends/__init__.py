"""Backends behind one interface; each module imports its runtime lazily, so choosing onnxruntime
never imports torch or tensorrt."""

from __future__ import annotations

from seglabel_server.backends.base import Backend, BackendInfo, DecoderOutput, ImageFeatures, MaskLogits
from seglabel_server.errors import ModelError
from seglabel_server.repository import ModelRepository

BACKENDS = ("onnxruntime", "torch", "tensorrt")


def create_backend(
    name: str,
    repo: ModelRepository,
    device: str = "cpu",
    precision: str = "fp32",
    load_clip: bool = True,
    threads: int = 0,
) -> Backend:
    if name == "onnxruntime":
        from seglabel_server.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(repo, device=device, threads=threads, load_clip=load_clip)
    if name == "torch":
        from seglabel_server.backends.torch_backend import TorchBackend

        return TorchBackend(repo, device=device, precision=precision, load_clip=load_clip)
    if name == "tensorrt":
        from seglabel_server.backends.tensorrt import TensorRTBackend

        return TensorRTBackend(repo, device=device, load_clip=load_clip)
    raise ModelError(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")


__all__ = [
    "Backend",
    "BackendInfo",
    "DecoderOutput",
    "ImageFeatures",
    "MaskLogits",
    "create_backend",
    "BACKENDS",
]
