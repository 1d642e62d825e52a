"""Backends behind one interface (load / run by model name); each module imports its runtime
lazily, so choosing onnxruntime never imports torch or tensorrt."""

from __future__ import annotations

from seglabel_server.backends.base import Backend, BackendInfo
from seglabel_server.backends.config import BACKENDS, BackendConfig
from seglabel_server.errors import ModelError
from seglabel_server.models.repository import ModelRepository


def open_backend(repo: ModelRepository, cfg: BackendConfig, models: list[str] | None = None) -> Backend:
    """The backend ``cfg`` names, with ``models`` loaded (default: every model of the repository
    that a registered kind runs)."""
    if cfg.backend == "onnxruntime":
        from seglabel_server.backends.onnxruntime import OnnxRuntimeBackend

        backend: Backend = OnnxRuntimeBackend(repo, cfg)
    elif cfg.backend == "torch":
        from seglabel_server.backends.torch_backend import TorchBackend

        backend = TorchBackend(repo, cfg)
    elif cfg.backend == "tensorrt":
        from seglabel_server.backends.tensorrt import TensorRTBackend

        backend = TensorRTBackend(repo, cfg)
    else:
        raise ModelError(f"unknown backend {cfg.backend!r} (one of {', '.join(BACKENDS)})")
    for model in repo.available_models() if models is None else models:
        backend.load(model)
    return backend


def create_backend(
    name: str,
    repo: ModelRepository,
    device: str = "cpu",
    precision: str = "fp32",
    models: list[str] | None = None,
    **options,
) -> Backend:
    """:func:`open_backend` with the settings as arguments (``options``: the other
    :class:`BackendConfig` fields), for tests, benchmarks and scripts."""
    return open_backend(repo, BackendConfig(name, device, precision, **options), models)


__all__ = ["Backend", "BackendConfig", "BackendInfo", "BACKENDS", "create_backend", "open_backend"]
