"""The video path's graphs (issue 34): the memory conditioner, the track decoder and the memory
encoder of ``torch_modules.video``, with objects, frames, memory frames, points and pointers as
dynamic axes (the repository's ``sam2_video`` family, ``families.py``), and ``export_video``: the
same graphs and the image encoder in a folder of their own, from a model in memory (benchmarks and
tests that compare with sam2's predictor on its weights)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from seglabel_export.exporter import _export_graph


def graph_examples(model) -> dict[str, tuple[dict, dict]]:
    """Each video graph's example inputs and dynamic axes, by its repository model name."""
    s, side = model.image_size, model.image_size // model.backbone_stride
    c, cm = model.hidden_dim, model.mem_dim
    r = torch.randn
    rows = torch.zeros(2, dtype=torch.int64)
    frames = {"image_embed": {0: "frames"}, "rows": {0: "objects"}}
    per_object = lambda *names: {n: {0: "objects"} for n in names}  # noqa: E731
    return {
        "sam2_track_conditioner": (
            {"image_embed": r(1, c, side, side), "rows": rows, "memory": r(2, 3, cm, side, side),
             "memory_tpos": torch.tensor([[0, 1, 2], [0, 2, 3]]), "memory_valid": torch.ones(2, 3),
             "ptrs": r(2, 2, c), "ptr_pos": r(2, 2), "ptr_valid": torch.ones(2, 2)},
            {**frames, **{n: {0: "objects", 1: "memory_frames"} for n in ("memory", "memory_tpos", "memory_valid")},
             **{n: {0: "objects", 1: "pointers"} for n in ("ptrs", "ptr_pos", "ptr_valid")}},
        ),
        "sam2_track_decoder": (
            {"image_embed": r(2, c, side, side), "high_res_feats_0": r(1, c // 8, 4 * side, 4 * side),
             "high_res_feats_1": r(1, c // 4, 2 * side, 2 * side), "rows": rows, "point_coords": r(2, 2, 2),
             "point_labels": torch.ones(2, 2, dtype=torch.int32), "mask_input": r(2, 1, 4 * side, 4 * side),
             "has_mask": torch.zeros(2)},
            {**per_object("image_embed", "rows", "mask_input", "has_mask"),
             "high_res_feats_0": {0: "frames"}, "high_res_feats_1": {0: "frames"},
             "point_coords": {0: "objects", 1: "points"}, "point_labels": {0: "objects", 1: "points"}},
        ),
        "sam2_memory_encoder": (
            {"image_embed": r(1, c, side, side), "rows": rows, "mask_logits": r(2, 1, s // 4, s // 4),
             "object_score": r(2, 1), "from_points": torch.zeros(2)},
            {**frames, **per_object("mask_logits", "object_score", "from_points")},
        ),
    }  # fmt: skip


def export_video(model, folder: Path, opset: int = 17) -> Path:
    """The video graphs of ``model`` (a ``SAM2Base``) and its image encoder as a repository of their
    own under ``folder`` (``<model name>/model.onnx`` and a manifest holding the ``sam2_video``
    section), for benchmarks and tests that compare with sam2's predictor on its own weights."""
    from seglabel_server.models.torch_modules.modules import Sam2ImageEncoder

    from seglabel_export.families import sam2_video_family

    family = sam2_video_family(model)
    s = model.image_size
    graphs = [
        ("sam2_image_encoder", {"images": torch.randn(1, 3, s, s)}, {"images": {0: "batch"}}),
        *family.graphs,
    ]
    modules = {"sam2_image_encoder": Sam2ImageEncoder(model).eval(), **family.modules}
    folder.mkdir(parents=True, exist_ok=True)
    for name, example, axes in graphs:
        _export_graph(modules[name], example, axes, folder / name / "model.onnx", opset)
    (folder / "video.json").write_text(json.dumps(family.section, indent=1))
    return folder
