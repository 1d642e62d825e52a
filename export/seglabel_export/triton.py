"""NVIDIA Triton model configuration: a ``config.pbtxt`` next to each ONNX model of the repository
(already in Triton's folder layout), so that ``tritonserver --model-repository DIR`` can load the
graphs as they are. Written from the manifest and checked against the ONNX graph itself.

A model whose every input and output has the named dynamic axis ``batch`` first batches in Triton
(``max_batch_size`` = its kind's GPU batch, dims without the batch axis, dynamic batching on); the
others (the SAM2 decoder: one image's features against N prompts) have ``max_batch_size: 0`` and
full dims. Named dynamic axes are -1.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

TRITON_TYPES = {
    "float32": "TYPE_FP32",
    "float16": "TYPE_FP16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
}


def _dims(shape) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


def _batches(entry: dict) -> bool:
    return all(v["shape"] and v["shape"][0] == "batch" for v in (*entry["inputs"], *entry["outputs"]))


def config_text(name: str, entry: dict, max_batch: int) -> str:
    """The ``config.pbtxt`` of one manifest model."""
    batching = _batches(entry) and max_batch > 0
    lines = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {max_batch if batching else 0}",
    ]
    for section, values in (("input", entry["inputs"]), ("output", entry["outputs"])):
        lines.append(f"{section} [")
        for i, v in enumerate(values):
            dims = _dims(v["shape"][1:] if batching else v["shape"])
            sep = "," if i < len(values) - 1 else ""
            lines.append(
                f'  {{ name: "{v["name"]}" data_type: {TRITON_TYPES[v["dtype"]]} dims: [ {", ".join(map(str, dims))} ] }}{sep}'
            )
        lines.append("]")
    if batching:
        lines.append("dynamic_batching { }")
    return "\n".join(lines) + "\n"


def write_configs(repo: Path, manifest: dict) -> list[str]:
    """``config.pbtxt`` for every ONNX model of the manifest; returns their names."""
    from seglabel_server.models import kinds

    written = []
    for name, entry in manifest["models"].items():
        if entry.get("platform") != "onnxruntime_onnx":
            continue
        try:
            kind = kinds.for_model(name)
            max_batch = max(kind.max_batch_gpu, kind.max_batch)
        except KeyError:
            max_batch = 0
        (Path(repo) / name / "config.pbtxt").write_text(config_text(name, entry, max_batch))
        written.append(name)
    return written


def model_config_module():
    """tritonclient's generated ``model_config_pb2`` (Triton's own ModelConfig message), loaded from
    its file: the package's ``__init__`` wants the full gRPC client, which only this message is
    needed of. Raises ImportError without tritonclient."""
    import tritonclient

    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("_triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def validate(repo: Path, name: str) -> list[str]:
    """Parse ``repo/name/config.pbtxt`` into Triton's ModelConfig and compare every input and output
    (name, data type, dims) with the ONNX graph; returns the problems (empty: valid)."""
    import onnx
    from google.protobuf import text_format

    mc = model_config_module()
    config = text_format.Parse((Path(repo) / name / "config.pbtxt").read_text(), mc.ModelConfig())
    graph = onnx.load(str(Path(repo) / name / "1" / "model.onnx"), load_external_data=False).graph
    problems = []
    if config.name != name or config.platform != "onnxruntime_onnx":
        problems.append(f"{name}: name/platform {config.name!r}/{config.platform!r}")
    batch = config.max_batch_size > 0
    for section, values in (("input", graph.input), ("output", graph.output)):
        declared = {c.name: c for c in getattr(config, section)}
        if set(declared) != {v.name for v in values}:
            problems.append(
                f"{name}: {section}s {sorted(declared)} vs graph {sorted(v.name for v in values)}"
            )
            continue
        for v in values:
            c = declared[v.name]
            t = v.type.tensor_type
            want_type = TRITON_TYPES[np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)).name]
            if mc.DataType.Name(c.data_type) != want_type:
                problems.append(f"{name}.{v.name}: {mc.DataType.Name(c.data_type)} vs graph {want_type}")
            dims = [d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim]
            if batch:
                if dims[0] != -1:
                    problems.append(f"{name}.{v.name}: batched, but the graph's first axis is {dims[0]}")
                dims = dims[1:]
            got = list(c.dims)
            # Triton's dims may fix an axis the graph leaves dynamic, never the reverse or a different size.
            if len(got) != len(dims) or any(g != d and d != -1 for g, d in zip(got, dims)):
                problems.append(f"{name}.{v.name}: dims {got} vs graph {dims}")
    return problems
