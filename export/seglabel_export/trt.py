"""TensorRT engines from the repository's ONNX graphs.

Optimization profiles cover every dynamic axis; shape inputs are int32 in the graphs already
(labels, input_ids). Each engine is saved beside its ONNX file as ``model.plan`` and the
manifest records the TensorRT version, the GPU and the profiles it was built for (an engine only runs
on the TensorRT version and GPU it was built with).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from seglabel_server.models import kinds
from seglabel_server.models.repository import MANIFEST_NAME, ModelRepository


class TensorRTUnavailable(RuntimeError):
    pass


def _require_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(
            "the tensorrt package is not installed (pip install tensorrt on a CUDA machine); no engines built"
        ) from exc
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as exc:
            raise TensorRTUnavailable("cuda-python is not installed (pip install cuda-python)") from exc
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        raise TensorRTUnavailable("no CUDA GPU is visible; TensorRT engines are built on the GPU they run on")
    err, props = cudart.cudaGetDeviceProperties(0)
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return trt, name.strip("\x00"), f"{props.major}.{props.minor}"


def profiles(manifest: dict, max_batch: int, max_prompts: int, max_crops: int) -> dict[str, dict]:
    """(min, opt, max) shapes per input of each model a registered kind runs, from the manifest's
    input shapes: every named (dynamic) axis gets a range, fixed axes stay as exported."""
    limits = {"encoder": max_batch, "clip": max_crops, "text": max(max_crops, 256)}
    out = {}
    for name, entry in manifest["models"].items():
        try:
            kind = kinds.for_model(name)
        except KeyError:
            continue
        units = limits.get(kind.name, max(kind.max_batch, kind.max_batch_gpu))
        # OCR's spatial axes: rapidocr resizes a detection input to at most 2000 px (multiples of
        # 32) and recognition crops to height 48, width 48 x the line's aspect ratio.
        axes = {"batch": units, "num_prompts": max_prompts, "num_points": 4, "height": 2048, "width": 3200}
        typical = {"num_points": 1, "height": 736, "width": 736}
        shapes = {}
        for inp in entry["inputs"]:
            dims = inp["shape"]
            if all(isinstance(d, int) for d in dims):
                continue
            hi = tuple(axes.get(d, units) if isinstance(d, str) else d for d in dims)
            lo = tuple(1 if isinstance(d, str) else d for d in dims)
            opt = tuple(
                min(h, typical.get(d, kind.default_max_batch("cuda"))) if isinstance(d, str) else h
                for d, h in zip(dims, hi)
            )
            shapes[inp["name"]] = (lo, opt, hi)
        if shapes:
            out[name] = shapes
    return out


def build_engines(
    root: Path,
    fp16: bool = False,
    workspace_gb: float = 4.0,
    max_batch: int = 8,
    max_prompts: int = 256,
    max_crops: int = 64,
    log: Callable[[str], None] = print,
) -> dict:
    trt, gpu, capability = _require_tensorrt()
    repo = ModelRepository.load(root)
    manifest = repo.manifest
    logger = trt.Logger(trt.Logger.WARNING)
    built = {}
    for name, shapes in profiles(manifest, max_batch, max_prompts, max_crops).items():
        onnx_path = repo.model_path(name)
        t0 = time.perf_counter()
        builder = trt.Builder(logger)
        flags = 0
        if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
        if fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        profile = builder.create_optimization_profile()
        for inp, (lo, opt, hi) in shapes.items():
            profile.set_shape(inp, lo, opt, hi)
        config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"{name}: TensorRT engine build failed (see the TensorRT log above)")
        plan_path = onnx_path.with_name("model.plan")
        plan_path.write_bytes(bytes(plan))
        info = {
            "path": str(plan_path.relative_to(repo.root)),
            "tensorrt_version": trt.__version__,
            "gpu": gpu,
            "compute_capability": capability,
            "precision": "fp16" if fp16 else "fp32",
            "profile": {k: [list(v) for v in vals] for k, vals in shapes.items()},
            "build_seconds": round(time.perf_counter() - t0, 1),
        }
        manifest["models"][name]["tensorrt"] = info
        built[name] = info
        log(f"  {name}: engine built in {info['build_seconds']}s ({info['precision']}, {gpu})")
    data = {k: v for k, v in manifest.items() if not k.startswith("_")}
    (repo.root / MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n")
    return built
