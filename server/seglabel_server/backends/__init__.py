"""Backends behind one interface (load / run by model name); each module imports its runtime
lazily, so choosing onnxruntime never imports torch or tensorrt."""

from __future__ import annotations

from seglabel_server.backends.base import Backend, BackendInfo
from seglabel_server.errors import ModelError
from seglabel_server.repository import ModelRepository

BACKENDS = ("onnxruntime", "torch", "tensorrt")


def create_backend(
    name: str,
    repo: ModelRepository,
    device: str = "cpu",
    precision: str = "fp32",
    threads: int = 0,
    models: list[str] | None = None,
    arena_shrinkage: bool = False,
    cpu_arena: bool = True,
    mask_path: str = "auto",
    decoder_layout: str = "auto",
    io_binding: bool | None = None,
    compile_mode: str = "none",
    max_batches: dict[str, int] | None = None,
) -> Backend:
    """A backend with ``models`` loaded (default: every model of the repository that a registered
    kind runs). ``mask_path`` and ``decoder_layout``: the torch backend's (see ServerConfig)."""
    if name == "onnxruntime":
        from seglabel_server.backends.onnxruntime import OnnxRuntimeBackend

        backend: Backend = OnnxRuntimeBackend(
            repo,
            device=device,
            threads=threads,
            arena_shrinkage=arena_shrinkage,
            cpu_arena=cpu_arena,
            io_binding=io_binding,
        )
    elif name == "torch":
        from seglabel_server.backends.torch_backend import TorchBackend

        backend = TorchBackend(
            repo,
            device=device,
            precision=precision,
            decoder_layout=decoder_layout,
            mask_path=mask_path,
            compile_mode=compile_mode,
            max_batches=max_batches,
        )
    elif name == "tensorrt":
        from seglabel_server.backends.tensorrt import TensorRTBackend

        backend = TensorRTBackend(repo, device=device)
    else:
        raise ModelError(f"unknown backend {name!r} (one of {', '.join(BACKENDS)})")
    for model in repo.available_models() if models is None else models:
        backend.load(model)
    return backend


__all__ = ["Backend", "BackendInfo", "create_backend", "BACKENDS"]
