"""rapidocr's PP-OCR graphs (text detection, orientation, recognition), copied as shipped in its wheel
into the model repository so the server runs them on its own backend, next to the other models.

They are real trained models (not exported here, so there is no PyTorch module to prove them
against: the repository records their sha256 and the rapidocr version they came from). The
recogniser's character list, which rapidocr reads from the graph's metadata, is written next to
it as ``ocr_rec/keys.txt``.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

OCR_MODELS = {  # repository name -> rapidocr config section
    "ocr_det": "Det",
    "ocr_cls": "Cls",
    "ocr_rec": "Rec",
}
# The graphs' axes by name (their own are p2o.DynamicDimension.N / -1): what rapidocr feeds them.
OCR_AXES = {
    "ocr_det": (["batch", 3, "height", "width"], ["batch", 1, "height", "width"]),
    "ocr_cls": (["batch", 3, 48, 192], ["batch", 2]),
    "ocr_rec": (["batch", 3, 48, "width"], ["batch", "steps", None]),
}
KEYS_FILE = "ocr_rec/keys.txt"


class OcrUnavailable(RuntimeError):
    pass


def rapidocr_config() -> tuple[dict, str]:
    """rapidocr's default configuration (absolute model paths) and its version."""
    try:
        import rapidocr_onnxruntime
        from rapidocr_onnxruntime.main import DEFAULT_CFG_PATH
        from rapidocr_onnxruntime.utils import read_yaml, update_model_path
    except ImportError as exc:
        raise OcrUnavailable(f"rapidocr_onnxruntime is not installed ({exc})") from exc
    from importlib.metadata import version

    del rapidocr_onnxruntime
    return update_model_path(read_yaml(str(DEFAULT_CFG_PATH))), version("rapidocr_onnxruntime")


def _describe(path: Path) -> tuple[list[dict], list[dict], list[str]]:
    import onnx

    model = onnx.load(str(path))

    def io(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [
                d.dim_param or (d.dim_value if d.dim_value > 0 else f"dim{i}")
                for i, d in enumerate(t.shape.dim)
            ]
            out.append(
                {
                    "name": v.name,
                    "shape": dims,
                    "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                }
            )
        return out

    keys = []
    for prop in model.metadata_props:
        if prop.key == "character":
            keys = prop.value.splitlines()
    return io(model.graph.input), io(model.graph.output), keys


def copy_into(repo: Path) -> dict:
    """Copy the three graphs into ``repo``; returns the manifest's ``ocr`` section with a ``models``
    entry per graph (moved into the manifest's ``models`` by the exporter)."""
    config, ver = rapidocr_config()
    models = {}
    for name, section in OCR_MODELS.items():
        src = Path(config[section]["model_path"])
        dst = repo / name / "1" / "model.onnx"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        inputs, outputs, keys = _describe(dst)
        for entries, named in zip((inputs, outputs), OCR_AXES[name]):
            entry = entries[0]
            if len(entry["shape"]) != len(named):
                raise OcrUnavailable(f"{src}: {entry['name']} has shape {entry['shape']}, expected {named}")
            entry["shape"] = [d if n is None else n for d, n in zip(entry["shape"], named)]
        if name == "ocr_rec":
            if not keys:
                raise OcrUnavailable(f"{src}: no character list in the recogniser's metadata")
            (repo / KEYS_FILE).write_text("\n".join(keys) + "\n", encoding="utf-8")
        models[name] = {
            "platform": "onnxruntime_onnx",
            "path": f"{name}/1/model.onnx",
            "inputs": inputs,
            "outputs": outputs,
            "bytes": dst.stat().st_size,
            "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
            "source": f"rapidocr_onnxruntime {ver}: {src.name}",
        }
    return {
        "spec": {
            "source": f"rapidocr_onnxruntime=={ver}",
            "architecture": "PP-OCRv4 det + PP-OCR mobile v2 cls + PP-OCRv4 rec",
            "random_weights": False,
        },
        "rapidocr_version": ver,
        "rec_keys": KEYS_FILE,
        "models": models,
    }
