"""``seglabel-export aot``: AOTInductor packages of the torch backend's own modules, written next to
each model's ONNX graph and loaded by ``seglabel-server --backend torch --torch-compile aot``.

Each model is ``torch.export``-ed with its batch axes dynamic (the names the manifest gives them;
for the multi-image SAM2 decoder also the number of images), then compiled by AOTInductor for one
device and precision (fp16/bf16: the module runs under autocast inside the package, as the eager
backend runs it). Nothing is traced or compiled when the server starts. Built on the machine (GPU
architecture, torch version) that serves it: the server checks both.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from seglabel_server.models import kinds
from seglabel_server.models.aot import expected_metadata, package_path
from seglabel_server.models.kinds.base import module_builder
from seglabel_server.models.repository import ModelRepository
from torch import nn

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
LAYOUTS = ("multi-image", "per-image")
# Example sizes of the dynamic axes while tracing: distinct and > 1, so that no size is specialised
# and no two axes are taken for one.
EXAMPLE = {"batch": 2, "num_prompts": 5, "num_points": 3, "num_images": 3}


class _Autocast(nn.Module):
    """``module`` under autocast, captured in the exported program."""

    def __init__(self, module: nn.Module, device_type: str, dtype):
        super().__init__()
        self.module, self.device_type, self.dtype = module, device_type, dtype

    def forward(self, *inputs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.module(*inputs)


def _signature(module: nn.Module, entry: dict, multi_image: bool) -> list[dict]:
    """Name, shape (str: a dynamic axis) and dtype of every input the package takes, in order."""
    shapes = {i["name"]: i for i in entry["inputs"]}
    out = []
    for name in module.input_names:
        spec = dict(shapes[name])
        if multi_image and name in ("image_embed", "high_res_feats_0", "high_res_feats_1"):
            spec["shape"] = ["num_images", *spec["shape"][1:]]
        out.append(spec)
    if multi_image:
        out.append({"name": "image_index", "shape": ["num_prompts"], "dtype": "int64"})
    return out


def _examples(signature: list[dict], device: str) -> tuple:
    gen = torch.Generator().manual_seed(0)
    args = []
    for spec in signature:
        shape = [EXAMPLE.get(d, 2) if isinstance(d, str) else int(d) for d in spec["shape"]]
        if spec["name"] == "image_index":
            x = torch.arange(shape[0]) % EXAMPLE["num_images"]
        elif spec["name"] == "point_labels":
            x = torch.ones(shape, dtype=torch.int32)
        elif spec["name"] == "min_iou":
            x = torch.zeros(shape)
        elif spec["dtype"].startswith("int"):
            x = torch.randint(0, 100, shape, generator=gen, dtype=getattr(torch, spec["dtype"]))
        else:
            x = torch.rand(shape, generator=gen, dtype=getattr(torch, spec["dtype"]))
        args.append(x.to(device))
    return tuple(args)


def _dynamic_shapes(signature: list[dict]) -> tuple:
    dims: dict[str, torch.export.Dim] = {}
    out = []
    for spec in signature:
        axes = {}
        for i, d in enumerate(spec["shape"]):
            if isinstance(d, str):
                axes[i] = dims.setdefault(d, torch.export.Dim(d, min=1))
        out.append(axes or None)
    return tuple(out)


def build_packages(
    root: str | Path,
    device: str = "cuda",
    precision: str = "fp32",
    decoder_layout: str | None = None,
    models: list[str] | None = None,
    autotune: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, dict]:
    """One package per model of the repository that the torch backend runs; returns what was built
    (path, seconds, bytes). ``decoder_layout``: the SAM2 decoder's, default multi-image on CUDA and
    per-image on the CPU (the torch backend's defaults)."""
    repo = ModelRepository.load(root)
    dev = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} not in {sorted(PRECISIONS)}")
    if precision != "fp32" and dev.type != "cuda":
        raise ValueError("fp16/bf16 packages need --device cuda (the torch backend's autocast)")
    layout = decoder_layout or ("multi-image" if dev.type == "cuda" else "per-image")
    if layout not in LAYOUTS:
        raise ValueError(f"decoder layout {layout!r} not in {LAYOUTS}")
    names = models or [m for m in repo.available_models() if kinds.for_model(m).torch_builder is not None]
    shared: dict = {}
    built = {}
    for model in names:
        kind = kinds.for_model(model)
        if kind.torch_builder is None:
            raise ValueError(f"{model}: the torch backend does not run this model (no torch_builder)")
        variant = kind.torch_variants.get("multi_image")
        multi = variant is not None and layout == "multi-image"
        key = "any" if variant is None else layout
        # The decoder is the exported formulation in both layouts (per-image: without image_index).
        module = module_builder(variant or kind.torch_builder)(repo.manifest, str(dev), shared).to(dev).eval()
        signature = _signature(module, repo.model_entry(model), multi)
        args = _examples(signature, str(dev))
        wrapped = (
            module if PRECISIONS[precision] is None else _Autocast(module, dev.type, PRECISIONS[precision])
        )
        t0 = time.perf_counter()
        with torch.no_grad():
            program = torch.export.export(wrapped, args, dynamic_shapes=_dynamic_shapes(signature))
        traced = time.perf_counter() - t0
        meta = expected_metadata(repo.manifest, model, dev.type, precision, key)
        meta.update(
            inputs=json.dumps([s["name"] for s in signature if s["name"] != "image_index"]),
            optional_inputs=json.dumps(["image_index"] if multi else []),
            outputs=json.dumps(list(module.output_names)),
            input_dtypes=json.dumps({s["name"]: s["dtype"] for s in signature}),
        )
        path = package_path(repo.root, model, dev.type, precision, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.pt2")
        configs = {"aot_inductor.metadata": meta, "max_autotune": autotune}
        torch._inductor.aoti_compile_and_package(program, package_path=str(tmp), inductor_configs=configs)
        tmp.replace(path)
        seconds = time.perf_counter() - t0
        built[model] = {"path": str(path), "seconds": round(seconds, 1), "bytes": path.stat().st_size}
        log(f"  {model}: {path.name} traced in {traced:.1f}s, compiled in {seconds - traced:.1f}s")
    return built
