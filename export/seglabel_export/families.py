"""Each model family of the repository: its manifest section (what the server reads: sizes,
normalisation, the checkpoint it was built from), its trace-only modules and the example inputs and
dynamic axes its graphs are exported with."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from seglabel_server.models.repository import TOKENIZER_FILE
from seglabel_server.models.torch_modules.depth import DEPTH_MEAN, DEPTH_STD
from seglabel_server.models.torch_modules.modules import (
    Sam2ImageEncoder,
    Sam2MaskDecoder,
    Sam2MaskDecoderGraph,
)
from seglabel_server.models.torch_modules.towers import ClipImageEncoder, ClipTextEncoder, DepthEstimator

from seglabel_export import sources

# (model name, example inputs by name, dynamic axes by input/output name)
Graph = tuple[str, dict[str, torch.Tensor], dict[str, dict[int, str]]]


@dataclass
class Family:
    section: dict  # the manifest's section of the family
    modules: dict[str, torch.nn.Module]  # model name -> the module its graph is traced from
    graphs: list[Graph]
    references: dict[str, torch.nn.Module] = field(
        default_factory=dict
    )  # parity's own computation, where it differs


def relative_to(repo: Path) -> Callable[[str], str]:
    """Paths in the manifest: relative when inside the repository (generated checkpoints travel with it)."""

    def rel(p: str) -> str:
        path = Path(p).resolve()
        return os.path.relpath(p, repo) if path.is_relative_to(repo.resolve()) else str(path)

    return rel


def _spec(spec, rel) -> dict:
    return {
        "spec": {**asdict(spec), "checkpoint": rel(spec.checkpoint)},
        "sha256": sources.sha256_file(spec.checkpoint),
    }


def sam2_family(spec, rel) -> Family:
    """SAM2.1's image encoder and prompt decoder (the graph formulation; sam2's own as the reference)."""
    model = sources.build_sam2(spec)
    size, c = model.image_size, model.sam_prompt_encoder.embed_dim
    section = {
        **_spec(spec, rel),
        "image_size": size,
        "embed_dim": c,
        "low_res_size": size // 4,
        "pixel_mean": list(sources.SAM2_MEAN),
        "pixel_std": list(sources.SAM2_STD),
        "mask_threshold": 0.0,
        "stability_offset": 1.0,
    }
    encoder = Sam2ImageEncoder(model).eval()
    modules = {
        "sam2_image_encoder": encoder,
        "sam2_mask_decoder": Sam2MaskDecoderGraph(model, 0.0, 1.0).eval(),
    }
    with torch.no_grad():
        feats = encoder(torch.zeros(1, 3, size, size))
    decoder_example = {
        "image_embed": feats[0],
        "high_res_feats_0": feats[1],
        "high_res_feats_1": feats[2],
        "point_coords": torch.full((4, 2, 2), size / 2),
        "point_labels": torch.ones(4, 2, dtype=torch.int32),
        "min_iou": torch.tensor([float("-inf")]),
    }
    decoder_axes = {
        "point_coords": {0: "num_prompts", 1: "num_points"},
        "point_labels": {0: "num_prompts", 1: "num_points"},
        "iou_predictions": {0: "num_prompts"},
        **{o: {0: "num_kept"} for o in Sam2MaskDecoder.output_names[1:]},
    }
    graphs = [
        (
            "sam2_image_encoder",
            {"images": torch.zeros(1, 3, size, size)},
            {"images": {0: "batch"}, **{o: {0: "batch"} for o in Sam2ImageEncoder.output_names}},
        ),
        ("sam2_mask_decoder", decoder_example, decoder_axes),
    ]
    return Family(section, modules, graphs, {"sam2_mask_decoder": Sam2MaskDecoder(model, 0.0, 1.0).eval()})


def sam2_video_family(model) -> Family:
    """SAM2.1's video path (``sam2_video``), from the image family's network (the same weights):
    the memory conditioner, the track decoder and the memory encoder, and the settings the host's
    tracking loop reads. The frames' features are the image encoder's."""
    from seglabel_server.models.torch_modules.video import (
        Sam2MemoryConditioner,
        Sam2MemoryEncoder,
        Sam2TrackDecoder,
        tracking_settings,
    )

    from seglabel_export.video import graph_examples

    modules = {
        "sam2_track_conditioner": Sam2MemoryConditioner(model).eval(),
        "sam2_track_decoder": Sam2TrackDecoder(model).eval(),
        "sam2_memory_encoder": Sam2MemoryEncoder(model).eval(),
    }
    examples = graph_examples(model)
    graphs = [(name, *examples[name]) for name in modules]
    return Family({"tracking": tracking_settings(model)}, modules, graphs)


def clip_family(spec, rel, repo: Path) -> Family:
    """open_clip's image and text towers, and the tokenizer's vocabulary copied into the repository."""
    clip = sources.build_clip(spec)
    isz = clip.visual.image_size
    isz = isz[0] if isinstance(isz, (tuple, list)) else isz
    tok_rel = f"clip_text_encoder/{TOKENIZER_FILE}"
    (repo / "clip_text_encoder").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sources.bpe_vocab_path(), repo / tok_rel)
    section = {
        **_spec(spec, rel),
        "image_size": int(isz),
        "mean": list(sources.CLIP_MEAN),
        "std": list(sources.CLIP_STD),
        "context_length": int(clip.context_length),
        "vocab_size": int(clip.vocab_size),
        "embed_dim": int(clip.text_projection.shape[1]),
        "logit_scale": float(clip.logit_scale.exp().item()),
        "tokenizer": tok_rel,
    }
    modules = {
        "clip_image_encoder": ClipImageEncoder(clip).eval(),
        "clip_text_encoder": ClipTextEncoder(clip).eval(),
    }
    graphs = [
        (
            "clip_image_encoder",
            {"pixel_values": torch.zeros(2, 3, isz, isz)},
            {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}},
        ),
        (
            "clip_text_encoder",
            {"input_ids": torch.zeros(2, clip.context_length, dtype=torch.int32)},
            {"input_ids": {0: "batch"}, "text_embeds": {0: "batch"}},
        ),
    ]
    return Family(section, modules, graphs)


def depth_family(spec, rel) -> Family:
    """Depth Anything V2 (relative inverse depth)."""
    ds = spec.image_size
    section = {
        **_spec(spec, rel),
        "image_size": ds,
        "mean": list(DEPTH_MEAN),
        "std": list(DEPTH_STD),
        "output": "relative inverse depth: larger is nearer",
    }
    modules = {"depth_estimator": DepthEstimator(sources.build_depth(spec)).eval()}
    graphs = [
        (
            "depth_estimator",
            {"images": torch.zeros(1, 3, ds, ds)},
            {"images": {0: "batch"}, "depth": {0: "batch"}},
        )
    ]
    return Family(section, modules, graphs)


def torch_entry(example: dict[str, torch.Tensor], axes: dict, module) -> dict:
    """A model's manifest entry without its ONNX graph: names, shapes (dynamic axes named, as the
    ONNX entries have them) and dtypes. Enough for the torch backend, which builds each module
    itself, its compiled warm-up and AOT packages."""
    return {
        "platform": "pytorch",
        "inputs": [
            {
                "name": k,
                "shape": [axes.get(k, {}).get(i, int(d)) for i, d in enumerate(v.shape)],
                "dtype": str(v.dtype).removeprefix("torch."),
            }
            for k, v in example.items()
        ],
        "outputs": [{"name": o} for o in module.output_names],
    }
