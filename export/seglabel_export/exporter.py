"""Export the four graphs to an ONNX model repository and prove parity against PyTorch.

Repository layout (NVIDIA Triton's, so the same folder can later be served by Triton)::

    DIR/manifest.json
    DIR/sam2_image_encoder/1/model.onnx
    DIR/sam2_mask_decoder/1/model.onnx
    DIR/clip_image_encoder/1/model.onnx
    DIR/clip_text_encoder/1/model.onnx
    DIR/clip_text_encoder/bpe_simple_vocab_16e6.txt.gz   (tokenizer vocabulary, read at serve time)
    DIR/checkpoints/                                     (random/tiny sources: the generated checkpoints)

The folder is built next to DIR and moved into place only when every graph exported and passed
parity: a failed export leaves no half model folder.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
import warnings
from pathlib import Path

import torch
from seglabel_server.models.repository import FORMAT_VERSION, MANIFEST_NAME

from seglabel_export import families, ocr_models, sources, triton
from seglabel_export.parity import (
    DECODER_NS,
    DECODER_PS,
    Log,
    default_photo,
    format_parity,
    parity_checks,
)


def _onnx_io(
    path: Path, dynamic_axes: dict, example_outputs: list[tuple[int, ...]]
) -> tuple[list[dict], list[dict]]:
    """Inputs/outputs of a graph: names, dtypes, shapes (dynamic axes by name, others concrete; the
    exporter leaves some output dims symbolic, so they are taken from the traced example)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(values, shapes=None):
        out = []
        for i, v in enumerate(values):
            t = v.type.tensor_type
            dims = [d.dim_param or d.dim_value for d in t.shape.dim]
            if shapes is not None:
                dims = list(shapes[i])
            axes = dynamic_axes.get(v.name, {})
            dims = [axes.get(j, d) for j, d in enumerate(dims)]
            out.append(
                {
                    "name": v.name,
                    "shape": dims,
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                }
            )
        return out

    return describe(model.graph.input), describe(model.graph.output, example_outputs)


def _export_graph(
    module, example: dict[str, torch.Tensor], dynamic_axes: dict, path: Path, opset: int
) -> float:
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # nn.MultiheadAttention's inference fast path (aten::_native_multi_head_attention) has no ONNX
    # symbolic; the plain path computes the same attention. Shape-check TracerWarnings are expected
    # (image size is fixed per graph).
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*advanced indexing.*")
            torch.onnx.export(
                module,
                tuple(example.values()),
                str(path),
                input_names=list(example),
                output_names=list(module.output_names),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return time.perf_counter() - t0


def export_model(
    repo: Path, name: str, module, example: dict[str, torch.Tensor], dynamic_axes: dict, opset: int = 17
) -> dict:
    """Trace ``module`` (a trace-only wrapper with ``output_names``) on ``example`` into
    ``repo/name/1/model.onnx``; returns its manifest entry (inputs and outputs by name, dtype and
    shape, dynamic axes by name). Every model kind's graph is exported through here."""
    path = Path(repo) / name / "1" / "model.onnx"
    secs = _export_graph(module, example, dynamic_axes, path, opset)
    with torch.no_grad():
        outs = module(*example.values())
    outs = outs if isinstance(outs, tuple) else (outs,)
    inputs, outputs = _onnx_io(path, dynamic_axes, [tuple(o.shape) for o in outs])
    return {
        "platform": "onnxruntime_onnx",
        "path": f"{name}/1/model.onnx",
        "opset": opset,
        "inputs": inputs,
        "outputs": outputs,
        "export_seconds": round(secs, 2),
        "bytes": path.stat().st_size,
    }


def export_repository(
    out_dir: str | os.PathLike,
    sam2_source: str,
    clip_source: str | None,
    *,
    sam2_config: str | None = None,
    clip_model: str = "ViT-B-32",
    opset: int = 17,
    seed: int = 0,
    decoder_ns=DECODER_NS,
    decoder_ps=DECODER_PS,
    log: Log = print,
    write_onnx: bool = True,
    depth_source: str | None = None,
    ocr: bool = False,
) -> dict:
    """Export SAM2 (+ CLIP unless ``clip_source`` is None, + Depth Anything V2 from ``depth_source``,
    + rapidocr's PP-OCR graphs with ``ocr``) into ``out_dir``; returns the manifest.
    ``write_onnx=False`` writes only checkpoints + manifest (enough for the torch backend, e.g. on a GPU
    machine where the ONNX graphs are not needed)."""
    out = Path(out_dir).resolve()
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        manifest = _export_into(
            tmp,
            sam2_source,
            clip_source,
            sam2_config,
            clip_model,
            opset,
            seed,
            decoder_ns,
            decoder_ps,
            log,
            write_onnx,
            depth_source,
            ocr,
        )
        failed = [r for r in manifest["parity"] if not r["ok"]]
        if failed:
            raise RuntimeError("parity failed:\n" + format_parity(failed))
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
        manifest["_root"] = str(out)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _export_into(
    repo: Path,
    sam2_source,
    clip_source,
    sam2_config,
    clip_model,
    opset,
    seed,
    decoder_ns,
    decoder_ps,
    log: Log,
    write_onnx: bool = True,
    depth_source: str | None = None,
    ocr: bool = False,
) -> dict:
    ckpt_dir = repo / "checkpoints"
    t0 = time.perf_counter()
    sam_spec = sources.resolve_sam2(sam2_source, ckpt_dir, sam2_config, seed)
    clip_spec = sources.resolve_clip(clip_source, ckpt_dir, clip_model, seed) if clip_source else None
    depth_spec = sources.resolve_depth(depth_source, ckpt_dir, seed) if depth_source else None
    rel = families.relative_to(repo)
    manifest = _manifest_head(repo, [s for s in (sam_spec, clip_spec, depth_spec) if s])
    built = {"sam2": families.sam2_family(sam_spec, rel)}
    built["sam2_video"] = families.sam2_video_family(built["sam2"].modules["sam2_image_encoder"].model)
    if clip_spec:
        built["clip"] = families.clip_family(clip_spec, rel, repo)
    if depth_spec:
        built["depth"] = families.depth_family(depth_spec, rel)
    for name in ("sam2", "sam2_video", "clip", "depth"):
        manifest[name] = built[name].section if name in built else None
    modules = {k: m for f in built.values() for k, m in f.modules.items()}
    graphs = [g for f in built.values() for g in f.graphs]
    manifest["ocr"] = ocr_models.copy_into(repo) if ocr else None
    if manifest["ocr"]:
        manifest["models"].update(manifest["ocr"].pop("models"))
    log(
        f"  sources ready in {time.perf_counter() - t0:.1f}s (sam2 {sam_spec.architecture}, "
        f"clip {clip_spec.architecture if clip_spec else 'none'}, "
        f"depth {depth_spec.architecture if depth_spec else 'none'}, ocr {'rapidocr' if ocr else 'none'})"
    )
    if not write_onnx:
        for name, example, axes in graphs:
            manifest["models"][name] = families.torch_entry(example, axes, modules[name])
        manifest["parity"] = []
        write_manifest(repo, manifest)
        return manifest
    for name, example, axes in graphs:
        entry = manifest["models"][name] = export_model(repo, name, modules[name], example, axes, opset)
        log(f"  exported {name}: {entry['export_seconds']:.1f}s, {entry['bytes'] / 1e6:.1f} MB")
    # Parity compares each graph with sam2's / open_clip's own computation.
    references = {**modules, **{k: m for f in built.values() for k, m in f.references.items()}}
    rows = parity_checks(repo, manifest, references, default_photo(), seed=seed + 1,
                         decoder_ns=decoder_ns, decoder_ps=decoder_ps, log=log)  # fmt: skip
    manifest["parity"] = rows
    for name in manifest["models"]:
        mine = [r for r in rows if r["model"] == name]
        if mine:  # (rapidocr's graphs are copied as shipped, not exported: nothing to compare)
            manifest["models"][name]["parity_worst_rel_l2"] = max(r["rel_l2"] for r in mine)
    write_manifest(repo, manifest)
    triton.write_configs(repo, manifest)  # config.pbtxt per model: the folder serves in Triton as is
    return manifest


def _manifest_head(repo: Path, specs: list) -> dict:
    """The manifest's fields before its families: format, when and with what it was exported."""
    import onnx
    import sam2

    return {
        "format_version": FORMAT_VERSION,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "exporter": {
            "torch": torch.__version__,
            "sam2": getattr(sam2, "__version__", "1.x"),
            "onnx": onnx.__version__,
        },
        "random_weights": any(s.random_weights for s in specs),
        "models": {},
        "_root": str(repo),
    }


def write_manifest(repo: Path, manifest: dict) -> None:
    data = {k: v for k, v in manifest.items() if not k.startswith("_")}
    tmp = repo / (MANIFEST_NAME + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(repo / MANIFEST_NAME)
