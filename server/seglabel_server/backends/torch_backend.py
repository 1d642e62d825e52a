"""PyTorch backend: sam2's and open_clip's own modules, wrapped exactly as exported.
CPU or CUDA; fp32, or fp16/bf16 autocast on CUDA. Needs torch, sam2 and open_clip (the export
extra). Each model's module comes from its kind's ``torch_builder`` (or a ``torch_variants``
builder for a capability this backend has); outputs stay on the device until :meth:`to_host`.

Capabilities (``Backend.capabilities``): ``device_masks``, the mask-and-label path that keeps
masks on the device (:mod:`seglabel_server.backends.torch_ops`); ``multi_image``, decoder calls
that mix images. Each inference worker thread runs on its own CUDA stream, so the scheduler's
stage workers overlap on one GPU."""

from __future__ import annotations

import contextlib
import inspect
import threading
import time
from typing import Any

import numpy as np

from seglabel_server.backends.base import Backend, BackendInfo
from seglabel_server.backends.config import BackendConfig
from seglabel_server.errors import ModelError
from seglabel_server.models import kinds
from seglabel_server.models.kinds.base import module_builder
from seglabel_server.models.repository import ModelRepository

DTYPES = ("fp32", "fp16", "bf16")
LAYOUTS = ("auto", "per-image", "multi-image")
MASK_PATHS = ("auto", "device", "host")


class TorchBackend(Backend):
    def __init__(self, repo: ModelRepository, cfg: BackendConfig):
        device, precision, compile_mode = cfg.device, cfg.precision, cfg.compile_mode
        decoder_layout, mask_path, max_batches = cfg.decoder_layout, cfg.mask_path, cfg.max_batches
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
        if decoder_layout not in LAYOUTS:
            raise ModelError(f"torch backend: decoder layout {decoder_layout!r} not in {LAYOUTS}")
        if mask_path not in MASK_PATHS:
            raise ModelError(f"torch backend: mask path {mask_path!r} not in {MASK_PATHS}")
        from seglabel_server.backends.torch_compile import MODES

        if compile_mode not in MODES:
            raise ModelError(f"torch backend: compile mode {compile_mode!r} not in {MODES}")
        self.compile_mode = compile_mode
        self.precision = precision
        self.max_batches = dict(max_batches or {})  # model -> largest batch the scheduler forms
        self.torch = torch
        self.repo = repo
        self.device = torch.device(device)
        self.mods: dict[str, Any] = {}
        self._inputs: dict[str, list[str]] = {}
        self._shared: dict = {}  # networks shared by several models (SAM2's encoder and decoder)
        self.amp = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        on_gpu = self.device.type == "cuda"
        caps = set()
        # Prompts of several images per decoder call: the GPU's layout. On the CPU one image per call
        # is cheaper (the first layer's image projections run once for all of its prompts).
        if decoder_layout == "multi-image" or (decoder_layout == "auto" and on_gpu):
            caps.add("multi_image")
        # On the CPU the numpy path is faster (full-size hiera-tiny + ViT-B-32, 1024 px, grid 16, 50
        # labels: 25.7-39.5 s host vs 29.8-41.0 s device per request, the crops 0.29-0.43 s vs
        # 2.1-3.5 s through roi_align): device is the GPU's default.
        if mask_path == "device" or (mask_path == "auto" and on_gpu):
            caps.add("device_masks")
        self.capabilities = frozenset(caps)
        self._streams = threading.local()
        self.info = BackendInfo(
            name="torch",
            device=str(self.device),
            providers=[f"torch {torch.__version__}"]
            + sorted(self.capabilities)
            + ([f"compiled {compile_mode}"] if compile_mode != "none" else []),
            precision=precision,
        )

    def device_ops(self):
        if "device_masks" not in self.capabilities:
            return None
        from seglabel_server.backends.torch_ops import TorchDeviceOps

        return TorchDeviceOps(self.device)

    def _layout(self, kind) -> str:
        """The package layout of ``kind``'s model: the decoder's layout, ``any`` for the others."""
        if "multi_image" not in kind.torch_variants:
            return "any"
        return "multi-image" if "multi_image" in self.capabilities else "per-image"

    def load(self, model: str) -> None:
        kind = kinds.for_model(model)
        if kind.torch_builder is None:
            raise ModelError(f"torch backend: model kind {kind.name!r} has no torch_builder")
        if self.compile_mode == "aot":
            from seglabel_server.backends.torch_aot import load_package

            mod = load_package(
                self.repo.root, self.repo.manifest, model, self.device, self.precision, self._layout(kind)
            )
            self.mods[model] = mod
            self._inputs[model] = list(mod.input_names)
            return
        caps = self.capabilities | ({"multi_image"} if self.compile_mode not in ("none", "aot") else set())
        # Compiled, the decoder is always the exported formulation (split around its selection).
        builder = next((b for cap, b in kind.torch_variants.items() if cap in caps), kind.torch_builder)
        try:
            mod = module_builder(builder)(self.repo.manifest, str(self.device), self._shared)
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(f"torch backend: cannot build {model}: {exc}") from exc
        mod = mod.to(self.device).eval()
        if self.compile_mode not in ("none", "aot"):
            from seglabel_server.backends.torch_compile import compile_module

            mod = compile_module(mod, self.compile_mode, self.max_batches.get(model, kind.max_batch))
        self.mods[model] = mod
        self._inputs[model] = list(
            getattr(mod, "input_names", None) or inspect.signature(mod.forward).parameters
        )

    def warm_up(self) -> tuple[int, float]:
        """Compiled engines: run every bucket of every loaded model once, so no request compiles.
        Returns (graphs run, seconds); (0, 0.0) when nothing is compiled."""
        if self.compile_mode == "none":
            return 0, 0.0
        from seglabel_server.backends.torch_aot import AotModule
        from seglabel_server.backends.torch_compile import CompiledDecoder

        def example(model: str):
            entry = self.repo.model_entry(model)

            def make(b: int):
                return tuple(
                    self.torch.zeros(
                        [b] + [1 if isinstance(d, str) else int(d) for d in i["shape"][1:]],
                        dtype=getattr(self.torch, np.dtype(i["dtype"]).name),
                        device=self.device,
                    )
                    for i in entry["inputs"]
                )

            return make

        def run_all() -> int:
            runs = 0
            with self._ctx():
                for model, mod in self.mods.items():
                    if isinstance(mod, AotModule):
                        runs += mod.warm_up(example(model))
                    elif isinstance(mod, CompiledDecoder):
                        enc = self.mods.get("sam2_image_encoder")
                        if enc is None:
                            continue
                        feats = enc(*example("sam2_image_encoder")(1))
                        runs += mod.warm_up(tuple(feats), "multi_image" in self.capabilities)
                    else:
                        runs += mod.warm_up(example(model))
            return runs

        t0 = time.perf_counter()
        return run_all(), time.perf_counter() - t0

    def unload(self, model: str) -> None:
        self.mods.pop(model, None)

    def loaded(self) -> list[str]:
        return list(self.mods)

    def _stream(self):
        """This thread's CUDA stream (stage workers overlap on the GPU); None on the CPU."""
        if self.device.type != "cuda":
            return None
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = self.torch.cuda.Stream(device=self.device)
        return stream

    def _ctx(self):
        ctx = contextlib.ExitStack()
        stream = self._stream()
        if stream is not None:
            ctx.enter_context(self.torch.cuda.stream(stream))
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
        with self._ctx():  # inputs copied on this thread's stream, then run there
            optional = {n: self._tensor(feeds[n]) for n in getattr(mod, "optional_inputs", ()) if n in feeds}
            outs = mod(*[self._tensor(feeds[n]) for n in self._inputs[model]], **optional)
        stream = self._stream()
        if stream is not None:
            # Outputs are read by other threads' streams: finished before they are handed over.
            stream.synchronize()
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
