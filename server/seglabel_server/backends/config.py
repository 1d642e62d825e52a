"""A backend's settings, one typed value (``ServerConfig.backend_config()`` builds it from the flags)."""

from __future__ import annotations

from dataclasses import dataclass, field

BACKENDS = ("onnxruntime", "torch", "tensorrt")


@dataclass
class BackendConfig:
    backend: str = "onnxruntime"  # one of BACKENDS
    device: str = "cpu"  # onnxruntime: cpu|cuda|tensorrt; torch: cpu|cuda[:N]; tensorrt: cuda[:N]
    precision: str = "fp32"  # torch: fp32 | fp16 | bf16 (autocast, CUDA only)
    # onnxruntime
    threads: int = 0  # intra-op threads (0: one per core)
    cpu_arena: bool = True
    arena_shrinkage: bool = False
    io_binding: bool | None = None  # None: on off the CPU
    # added to the nice value of the sessions' thread pools (batch work's; 0: the server's own), and
    # the models a click runs get sessions of their own at the server's priority (the interactive lane)
    batch_nice: int = 0
    # torch
    mask_path: str = "auto"  # auto | device | host
    decoder_layout: str = "auto"  # auto | per-image | multi-image
    compile_mode: str = "none"  # none | default | reduce-overhead | max-autotune | ... | aot
    max_batches: dict[str, int] = field(default_factory=dict)  # model -> largest batch the scheduler forms
