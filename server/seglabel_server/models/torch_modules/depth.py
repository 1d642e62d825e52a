"""Depth Anything V2 (DINOv2 ViT + DPT head) as transformers' ``DepthAnythingForDepthEstimation``,
built from the official checkpoint (``depth_anything_v2_vits.pth`` from the Depth-Anything-V2
repository: the ``DepthAnythingV2`` module's state dict), a Hugging Face-format folder
(``config.json`` + weights), or a written random/tiny checkpoint in the official format.

The official -> transformers key mapping follows transformers' own conversion script
(``convert_depth_anything_to_hf.py``): the same weights, renamed, with DINOv2's fused ``qkv``
split into query / key / value. Used by export and by the PyTorch backend; imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from seglabel_server.models.torch_modules.checkpoints import CheckpointError, _load_strict, _load_torch_file

# The released V2 sizes (the DPT head reads these intermediate blocks; transformers counts the
# embeddings as stage 0, so official block i is out_index i + 1). "tiny" is for tests.
DEPTH_SIZES: dict[str, dict] = {
    "vits": dict(hidden=384, layers=12, heads=6, out=[3, 6, 9, 12], fusion=64, neck=[48, 96, 192, 384]),
    "vitb": dict(hidden=768, layers=12, heads=12, out=[3, 6, 9, 12], fusion=128, neck=[96, 192, 384, 768]),
    "vitl": dict(
        hidden=1024, layers=24, heads=16, out=[5, 12, 18, 24], fusion=256, neck=[256, 512, 1024, 1024]
    ),
    "tiny": dict(hidden=32, layers=4, heads=2, out=[1, 2, 3, 4], fusion=16, neck=[8, 16, 32, 32], head=8),
}
DEPTH_IMAGE_SIZE = 518  # the released models' input (37 x 37 patches of 14)
DEPTH_TINY_IMAGE_SIZE = 56
DEPTH_MEAN = (0.485, 0.456, 0.406)
DEPTH_STD = (0.229, 0.224, 0.225)


@dataclass
class DepthSpec:
    """How to rebuild a Depth Anything V2 model (recorded in the manifest)."""

    source: str
    architecture: str
    size: str
    checkpoint: str = ""
    checkpoint_format: str = "official"  # or "hf" (a transformers folder)
    image_size: int = DEPTH_IMAGE_SIZE
    random_weights: bool = False


def depth_config(size: str, image_size: int = DEPTH_IMAGE_SIZE):
    from transformers import DepthAnythingConfig, Dinov2Config

    if size not in DEPTH_SIZES:
        raise CheckpointError(f"unknown Depth Anything V2 size {size!r} (one of {', '.join(DEPTH_SIZES)})")
    d = DEPTH_SIZES[size]
    backbone = Dinov2Config(
        hidden_size=d["hidden"],
        num_hidden_layers=d["layers"],
        num_attention_heads=d["heads"],
        image_size=image_size,
        patch_size=14,
        out_indices=d["out"],
        apply_layernorm=True,
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=d["hidden"],
        patch_size=14,
        fusion_hidden_size=d["fusion"],
        neck_hidden_sizes=d["neck"],
        head_hidden_size=d.get("head", 32),
        depth_estimation_type="relative",
    )


# transformers' names for one attention layer: (query, key, value, output projection). 5.x uses
# q_proj/k_proj/v_proj/o_proj; 4.x attention.query/key/value and output.dense.
_ATTN_V5 = ("attention.q_proj", "attention.k_proj", "attention.v_proj", "attention.o_proj")
_ATTN_V4 = (
    "attention.attention.query",
    "attention.attention.key",
    "attention.attention.value",
    "attention.output.dense",
)


def _attn_names(hf_keys) -> tuple[str, ...]:
    return _ATTN_V5 if any(".attention.q_proj." in k for k in hf_keys) else _ATTN_V4


def _renames(layers: int, attn: tuple[str, ...]) -> list[tuple[str, str]]:
    """(official key, transformers key) for every weight but the fused qkv."""
    r = [
        ("pretrained.cls_token", "backbone.embeddings.cls_token"),
        ("pretrained.mask_token", "backbone.embeddings.mask_token"),
        ("pretrained.pos_embed", "backbone.embeddings.position_embeddings"),
        ("pretrained.patch_embed.proj.weight", "backbone.embeddings.patch_embeddings.projection.weight"),
        ("pretrained.patch_embed.proj.bias", "backbone.embeddings.patch_embeddings.projection.bias"),
        ("pretrained.norm.weight", "backbone.layernorm.weight"),
        ("pretrained.norm.bias", "backbone.layernorm.bias"),
    ]
    for i in range(layers):
        o, h = f"pretrained.blocks.{i}", f"backbone.encoder.layer.{i}"
        r += [
            (f"{o}.ls1.gamma", f"{h}.layer_scale1.lambda1"),
            (f"{o}.ls2.gamma", f"{h}.layer_scale2.lambda1"),
        ]
        for part in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
            r += [(f"{o}.{part}.{w}", f"{h}.{part}.{w}") for w in ("weight", "bias")]
        r += [(f"{o}.attn.proj.{w}", f"{h}.{attn[3]}.{w}") for w in ("weight", "bias")]
    for i in range(4):
        r += [(f"depth_head.projects.{i}.{w}", f"neck.reassemble_stage.layers.{i}.projection.{w}") for w in ("weight", "bias")]  # fmt: skip
        if i != 2:  # the third reassemble stage keeps its resolution: no resize layer
            r += [(f"depth_head.resize_layers.{i}.{w}", f"neck.reassemble_stage.layers.{i}.resize.{w}") for w in ("weight", "bias")]  # fmt: skip
        r.append((f"depth_head.scratch.layer{i + 1}_rn.weight", f"neck.convs.{i}.weight"))
    for i in range(1, 5):  # refinenet4 fuses first: transformers numbers the fusion layers the other way
        o, h = f"depth_head.scratch.refinenet{i}", f"neck.fusion_stage.layers.{4 - i}"
        r += [(f"{o}.out_conv.{w}", f"{h}.projection.{w}") for w in ("weight", "bias")]
        for u in (1, 2):
            for c in (1, 2):
                r += [(f"{o}.resConfUnit{u}.conv{c}.{w}", f"{h}.residual_layer{u}.convolution{c}.{w}") for w in ("weight", "bias")]  # fmt: skip
    r += [
        ("depth_head.scratch.output_conv1.weight", "head.conv1.weight"),
        ("depth_head.scratch.output_conv1.bias", "head.conv1.bias"),
        ("depth_head.scratch.output_conv2.0.weight", "head.conv2.weight"),
        ("depth_head.scratch.output_conv2.0.bias", "head.conv2.bias"),
        ("depth_head.scratch.output_conv2.2.weight", "head.conv3.weight"),
        ("depth_head.scratch.output_conv2.2.bias", "head.conv3.bias"),
    ]
    return r


def official_to_hf(sd: dict, layers: int, hf_keys) -> dict:
    """An official state dict as transformers' (named like ``hf_keys``, the target model's keys;
    keys it does not know are kept, so that the strict load names them)."""
    attn = _attn_names(hf_keys)
    sd = dict(sd)
    out = {}
    for old, new in _renames(layers, attn):
        if old in sd:
            out[new] = sd.pop(old)
    for i in range(layers):
        for w in ("weight", "bias"):
            fused = sd.pop(f"pretrained.blocks.{i}.attn.qkv.{w}", None)
            if fused is None:
                continue
            for name, part in zip(attn[:3], fused.chunk(3, dim=0)):
                out[f"backbone.encoder.layer.{i}.{name}.{w}"] = part.clone()
    out.update(sd)
    return out


def hf_to_official(sd: dict, layers: int) -> dict:
    """The inverse: what the official repository's ``DepthAnythingV2.state_dict()`` holds."""
    attn = _attn_names(sd)
    sd = dict(sd)
    out = {old: sd.pop(new) for old, new in _renames(layers, attn)}
    for i in range(layers):
        for w in ("weight", "bias"):
            parts = [sd.pop(f"backbone.encoder.layer.{i}.{n}.{w}") for n in attn[:3]]
            out[f"pretrained.blocks.{i}.attn.qkv.{w}"] = torch.cat(parts, dim=0)
    if sd:
        raise ValueError(f"unmapped transformers keys: {', '.join(list(sd)[:5])}")
    return out


def read_official(path: str | os.PathLike) -> dict:
    sd = _load_torch_file(path)
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
        sd = sd["model"]
    if isinstance(sd, dict):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if (
        not isinstance(sd, dict)
        or "pretrained.pos_embed" not in sd
        or "depth_head.projects.0.weight" not in sd
    ):
        raise CheckpointError(
            f"{path}: not a Depth Anything V2 checkpoint (no pretrained.pos_embed / depth_head.projects.0.weight)"
        )
    return sd


def size_from_state_dict(sd: dict, path: str | os.PathLike) -> str:
    """The released size whose width and depth the weights have."""
    hidden = int(sd["pretrained.pos_embed"].shape[-1])
    layers = len({k.split(".")[2] for k in sd if k.startswith("pretrained.blocks.")})
    for size, d in DEPTH_SIZES.items():
        if d["hidden"] == hidden and d["layers"] == layers:
            return size
    raise CheckpointError(f"{path}: a ViT of width {hidden} and {layers} blocks is no Depth Anything V2 size")


def build_depth(spec: DepthSpec, device: str = "cpu") -> torch.nn.Module:
    """transformers' DepthAnythingForDepthEstimation for ``spec``, weights loaded, eval mode."""
    from transformers import DepthAnythingForDepthEstimation

    if spec.checkpoint_format == "hf":
        folder = Path(spec.checkpoint)
        if not (folder / "config.json").is_file():
            raise CheckpointError(f"{folder}: no config.json (expected a Hugging Face model folder)")
        try:
            model = DepthAnythingForDepthEstimation.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise CheckpointError(f"{folder}: cannot load the model ({type(exc).__name__}: {exc})") from exc
        return model.float().to(device).eval()
    model = DepthAnythingForDepthEstimation(depth_config(spec.size, spec.image_size))
    if spec.checkpoint:
        sd = official_to_hf(
            read_official(spec.checkpoint), DEPTH_SIZES[spec.size]["layers"], model.state_dict()
        )
        _load_strict(
            model, {k: v.float() for k, v in sd.items()}, spec.checkpoint, f"Depth Anything V2 {spec.size}"
        )
    return model.float().to(device).eval()
