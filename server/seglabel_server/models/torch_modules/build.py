"""Per-model builders: the PyTorch module of one manifest model, rebuilt from the checkpoint the
manifest records. Kinds name these builders (``ModelKind.torch_builder``); models of one family
share one loaded network through ``shared`` (the encoder and decoder use the same SAM2 weights)."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from seglabel_server.models.torch_modules import checkpoints, depth
from seglabel_server.models.torch_modules.modules import (
    Sam2ImageEncoder,
    Sam2MaskDecoder,
    Sam2MaskDecoderMultiImage,
)
from seglabel_server.models.torch_modules.towers import ClipImageEncoder, ClipTextEncoder, DepthEstimator
from seglabel_server.models.torch_modules.video import (
    Sam2MemoryConditioner,
    Sam2MemoryEncoder,
    Sam2TrackDecoder,
)


def resolve_path(manifest: dict, path: str) -> str:
    """A manifest path (relative to the repository, or absolute) as an absolute path."""
    p = Path(path)
    return str(p if p.is_absolute() else Path(manifest["_root"]) / p)


def _network(family: str, manifest: dict, device: str, shared: dict) -> nn.Module:
    """The family's network (``sam2``, ``clip`` or ``depth``) from its manifest spec, built once per backend."""
    if (family, device) not in shared:
        spec_cls, build = {
            "sam2": (checkpoints.Sam2Spec, checkpoints.build_sam2),
            "clip": (checkpoints.ClipSpec, checkpoints.build_clip),
            "depth": (depth.DepthSpec, depth.build_depth),
        }[family]
        spec = spec_cls(**manifest[family]["spec"])
        spec.checkpoint = resolve_path(manifest, spec.checkpoint)
        shared[family, device] = build(spec, device)
    return shared[family, device]


def sam2_image_encoder(manifest: dict, device: str, shared: dict) -> nn.Module:
    return Sam2ImageEncoder(_network("sam2", manifest, device, shared)).eval()


def sam2_mask_decoder(manifest: dict, device: str, shared: dict) -> nn.Module:
    """The reference formulation (sam2's own calls), which the exported graph is proved against."""
    sam = manifest["sam2"]
    return Sam2MaskDecoder(
        _network("sam2", manifest, device, shared), sam["mask_threshold"], sam["stability_offset"]
    ).eval()


def sam2_mask_decoder_multi_image(manifest: dict, device: str, shared: dict) -> nn.Module:
    """The exported formulation over prompts of several images per call (the GPU's layout)."""
    sam = manifest["sam2"]
    return Sam2MaskDecoderMultiImage(
        _network("sam2", manifest, device, shared), sam["mask_threshold"], sam["stability_offset"]
    ).eval()


def sam2_track_conditioner(manifest: dict, device: str, shared: dict) -> nn.Module:
    return Sam2MemoryConditioner(_network("sam2", manifest, device, shared)).eval()


def sam2_track_decoder(manifest: dict, device: str, shared: dict) -> nn.Module:
    return Sam2TrackDecoder(_network("sam2", manifest, device, shared)).eval()


def sam2_memory_encoder(manifest: dict, device: str, shared: dict) -> nn.Module:
    return Sam2MemoryEncoder(_network("sam2", manifest, device, shared)).eval()


def clip_image_encoder(manifest: dict, device: str, shared: dict) -> nn.Module:
    return ClipImageEncoder(_network("clip", manifest, device, shared)).eval()


def clip_text_encoder(manifest: dict, device: str, shared: dict) -> nn.Module:
    return ClipTextEncoder(_network("clip", manifest, device, shared)).eval()


def depth_estimator(manifest: dict, device: str, shared: dict) -> nn.Module:
    return DepthEstimator(_network("depth", manifest, device, shared)).eval()


def build_modules(manifest: dict, device: str = "cpu") -> dict[str, nn.Module]:
    """Every module of a repository (SAM2, and CLIP / depth when the manifest has them): export's verify."""
    shared: dict = {}
    names = ["sam2_image_encoder", "sam2_mask_decoder"]
    if manifest.get("clip"):
        names += ["clip_image_encoder", "clip_text_encoder"]
    if manifest.get("depth"):
        names.append("depth_estimator")
    if manifest.get("sam2_video"):
        names += ["sam2_track_conditioner", "sam2_track_decoder", "sam2_memory_encoder"]
    return {name: globals()[name](manifest, device, shared) for name in names}
