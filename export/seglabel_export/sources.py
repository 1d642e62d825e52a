"""Build SAM2.1, CLIP and Depth Anything V2 torch modules from official checkpoints, seeded random
weights or tiny configs.

Source strings (``--sam2`` / ``--clip`` / ``--depth``):

* a path to an official checkpoint file (``sam2.1_hiera_tiny.pt``; OpenAI ``ViT-B-32.pt``;
  an open_clip ``open_clip_pytorch_model.bin``/``.pt``/``.safetensors`` is not supported: torch files only),
* ``random:<size>``: the real architecture with seeded random weights
  (SAM2: ``tiny|small|base_plus|large``; CLIP: an open_clip model name such as ``ViT-B-32``;
  depth: ``vits|vitb|vitl``),
* depth only: a Hugging Face-format folder (``config.json`` + weights, transformers'
  ``DepthAnythingForDepthEstimation``),
* ``tiny``: a much smaller configuration of the same classes, for tests.
* SAM2 only, ``random-smooth:<size>`` (and ``tiny-smooth``): ``random:<size>`` (``tiny``) with
  :func:`smooth_masks` applied, for benchmarks of the answer path: masks with trained-like run
  counts (see there).

Every source ends in the same place: a checkpoint file in the official format, loaded with
``torch.load(..., weights_only=True)``. Random and tiny sources first write such a file, so the
loader users' official files go through is the one the tests exercise.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from seglabel_server.models.torch_modules.checkpoints import (
    CheckpointError,
    ClipSpec,
    Sam2Spec,
    build_clip,
    build_sam2,
    read_clip_state_dict,
)
from seglabel_server.models.torch_modules.depth import (
    DEPTH_IMAGE_SIZE,
    DEPTH_SIZES,
    DEPTH_TINY_IMAGE_SIZE,
    DepthSpec,
    build_depth,
    hf_to_official,
    read_official,
    size_from_state_dict,
)

SAM2_CONFIGS = {
    "tiny": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "small": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "base_plus": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "large": "configs/sam2.1/sam2.1_hiera_l.yaml",
}

# sam2's hiera-tiny config shrunk to image size 256 and a few channels: the same classes, exported
# and verified in well under a second. (A global-attention block must not open a stage.)
SAM2_TINY_OVERRIDES = [
    "++model.image_size=256",
    "++model.image_encoder.trunk.embed_dim=16",
    "++model.image_encoder.trunk.num_heads=1",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[4,4]",
    "++model.image_encoder.neck.d_model=32",
    "++model.image_encoder.neck.position_encoding.num_pos_feats=32",
    "++model.image_encoder.neck.backbone_channel_list=[128,64,32,16]",
    "++model.memory_attention.d_model=32",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.d_model=32",
    "++model.memory_attention.layer.dim_feedforward=64",
    "++model.memory_attention.layer.self_attention.embedding_dim=32",
    "++model.memory_attention.layer.self_attention.feat_sizes=[16,16]",
    "++model.memory_attention.layer.cross_attention.embedding_dim=32",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[16,16]",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=16",
    "++model.memory_encoder.out_dim=16",
    "++model.memory_encoder.position_encoding.num_pos_feats=16",
    "++model.memory_encoder.mask_downsampler.embed_dim=32",
    "++model.memory_encoder.fuser.layer.dim=32",
    "++model.memory_encoder.fuser.num_layers=1",
    "++model.num_maskmem=2",
    # the memory encoder projects from the neck's width (sam2's configs leave it at 256)
    "++model.memory_encoder.in_dim=32",
]

# What sam2's build_sam2_video_predictor adds to a config's model (its post-processing on; its
# fill_hole_area=8 is the predictor's own, not the model's): the video path is proved against sam2's
# video predictor built this way.
SAM2_VIDEO_OVERRIDES = [
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "++model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
    "++model.binarize_mask_from_pts_for_mem_enc=true",
]

# open_clip.CLIP kwargs for the tiny test model: the real tokenizer (77 tokens, 49408 words) still fits.
CLIP_TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 64, "layers": 2, "head_width": 64},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SAM2_MEAN = (0.485, 0.456, 0.406)
SAM2_STD = (0.229, 0.224, 0.225)


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file, or of a model folder's files (names and bytes, in name order)."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- SAM2


def sam2_size_from_name(name: str) -> str:
    m = re.search(r"hiera[_-](tiny|small|base_plus|b\+|large|t|s|l)\b", Path(name).stem)
    if not m:
        raise CheckpointError(
            f"{name}: cannot tell the SAM2.1 size from the file name; pass --sam2-config "
            f"({', '.join(SAM2_CONFIGS)})"
        )
    return {"t": "tiny", "s": "small", "b+": "base_plus", "l": "large"}.get(m.group(1), m.group(1))


def smooth_masks(model: torch.nn.Module) -> torch.nn.Module:
    """Turn a random-weight SAM2 into one whose masks have the run counts of a trained model's
    (benchmarks of the answer path only; the weights stay random, the masks meaningless).

    Random weights give masks as ragged as noise: on astronaut.jpg at 1024 x 1024, grid 16, the 50
    best have ~58,000 runs each, where a trained SAM mask has hundreds to a few thousand. The noise
    comes from the trunk's random blocks, its position embeddings and the decoder's transposed
    convolutions (a different random kernel tap per output pixel of each 2 x 2 block). This changes
    weight values only, in place, on the model of the same architecture (every graph keeps its
    operations and shapes, so its cost is unchanged):

    - the patch embedding's 7 x 7 kernels averaged over their taps (a box filter of the photo's colours);
    - every Hiera block's residual branches (attention projection, MLP output) zeroed: each block is
      the identity, or at a stage's start its projection and 2 x 2 max-pool;
    - the trunk's position embeddings (global and windowed) zeroed;
    - the mask decoder's two transposed convolutions' kernels averaged over their 2 x 2 taps.

    The image embedding is then a smooth function of the photo's local colours, and masks follow its
    colour regions (measured: the 50 masks of highest predicted IoU have ~1,800 runs each)."""
    with torch.no_grad():
        trunk = model.image_encoder.trunk
        kernel = trunk.patch_embed.proj.weight
        kernel.copy_(kernel.mean(dim=(2, 3), keepdim=True).expand_as(kernel))
        trunk.pos_embed.zero_()
        trunk.pos_embed_window.zero_()
        for block in trunk.blocks:
            for layer in (block.attn.proj, block.mlp.layers[-1]):
                layer.weight.zero_()
                layer.bias.zero_()
        upscaling = model.sam_mask_decoder.output_upscaling
        for conv in (upscaling[0], upscaling[3]):
            conv.weight.copy_(conv.weight.mean(dim=(2, 3), keepdim=True).expand_as(conv.weight))
    return model


def resolve_sam2(source: str, workdir: Path, config: str | None = None, seed: int = 0) -> Sam2Spec:
    """Turn a ``--sam2`` source into a spec whose checkpoint file exists (written for random/tiny)."""
    if source in ("tiny", "tiny-smooth") or source.startswith(("random:", "random-smooth:")):
        shrunk, smooth = source.startswith("tiny"), "smooth" in source
        size = "tiny" if shrunk else source.split(":", 1)[1]
        if size not in SAM2_CONFIGS:
            raise CheckpointError(
                f"{source}: unknown SAM2.1 size {size!r} (one of {', '.join(SAM2_CONFIGS)})"
            )
        spec = Sam2Spec(
            source=source,
            architecture=("sam2.1_hiera_tiny(shrunk for tests)" if shrunk else f"sam2.1_hiera_{size}")
            + (" (random weights, smooth_masks transform)" if smooth else ""),
            config=SAM2_CONFIGS[size],
            overrides=list(SAM2_TINY_OVERRIDES) if shrunk else [],
            random_weights=True,
        )
        torch.manual_seed(seed)
        model = build_sam2(spec)
        if smooth:
            smooth_masks(model)
        workdir.mkdir(parents=True, exist_ok=True)
        name = "sam2_tiny_random" if shrunk else f"sam2.1_hiera_{size}_random"
        path = workdir / f"{name}{'_smooth' * smooth}.pt"
        torch.save({"model": model.state_dict()}, path)
        spec.checkpoint = str(path)
        return spec
    if source.startswith("tiny:"):  # a checkpoint of the tests' tiny architecture (e.g. weights a test tuned)
        path = source.split(":", 1)[1]
        return Sam2Spec(source=source, architecture="sam2.1_hiera_tiny(shrunk for tests)", config=SAM2_CONFIGS["tiny"],
                        overrides=list(SAM2_TINY_OVERRIDES), checkpoint=path, random_weights=True)  # fmt: skip
    size = config or sam2_size_from_name(source)
    if size not in SAM2_CONFIGS:
        raise CheckpointError(f"{source}: unknown SAM2.1 config {size!r}")
    return Sam2Spec(
        source=source, architecture=f"sam2.1_hiera_{size}", config=SAM2_CONFIGS[size], checkpoint=str(source)
    )


# --------------------------------------------------------------------------------------------- CLIP


def openai_config_from_state_dict(sd: dict) -> dict:
    """open_clip kwargs that reproduce an OpenAI checkpoint's architecture (what open_clip infers)."""
    vision_width = sd["visual.conv1.weight"].shape[0]
    patch = sd["visual.conv1.weight"].shape[-1]
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    width = sd["ln_final.weight"].shape[0]
    return {
        "embed_dim": int(sd["text_projection"].shape[1]),
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": int(patch * grid),
            "patch_size": int(patch),
            "width": int(vision_width),
            "layers": len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")}),
            "head_width": 64,
        },
        "text_cfg": {
            "context_length": int(sd["positional_embedding"].shape[0]),
            "vocab_size": int(sd["token_embedding.weight"].shape[0]),
            "width": int(width),
            "heads": int(width // 64),
            "layers": len({k.split(".")[2] for k in sd if k.startswith("transformer.resblocks.")}),
        },
    }


def resolve_clip(source: str, workdir: Path, model_name: str = "ViT-B-32", seed: int = 0) -> ClipSpec:
    """Turn a ``--clip`` source into a spec whose checkpoint file exists (written for random/tiny)."""
    import open_clip

    if source == "tiny" or source.startswith("random:"):
        name = "tiny" if source == "tiny" else source.split(":", 1)[1]
        if source == "tiny":
            cfg = CLIP_TINY_CONFIG
        else:
            cfg = open_clip.get_model_config(name)
            if cfg is None:
                raise CheckpointError(f"{source}: unknown open_clip model {name!r}")
        cfg = {k: v for k, v in cfg.items() if k in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")}
        spec = ClipSpec(
            source=source,
            architecture="clip-tiny(tests)" if source == "tiny" else name,
            model_config=cfg,
            random_weights=True,
        )
        torch.manual_seed(seed)
        model = build_clip(spec)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"clip_{name}_random.pt"
        torch.save(model.state_dict(), path)
        spec.checkpoint = str(path)
        return spec
    # An official file: OpenAI's (architecture read off the weights, QuickGELU) or open_clip's (by name).
    sd, is_openai = read_clip_state_dict(source)
    if is_openai:
        return ClipSpec(
            source=source,
            architecture=f"openai/{model_name}",
            model_config=openai_config_from_state_dict(sd),
            checkpoint=str(source),
            checkpoint_format="openai",
        )
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        raise CheckpointError(f"{source}: unknown open_clip model {model_name!r} (pass --clip-model)")
    cfg = {k: v for k, v in cfg.items() if k in ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu")}
    return ClipSpec(source=source, architecture=model_name, model_config=cfg, checkpoint=str(source))


def bpe_vocab_path() -> str:
    from open_clip.tokenizer import default_bpe

    return default_bpe()


# -------------------------------------------------------------------------------------------- depth


def resolve_depth(source: str, workdir: Path, seed: int = 0) -> DepthSpec:
    """Turn a ``--depth`` source into a spec whose checkpoint exists. Random and tiny sources are
    written as official-format files (``DepthAnythingV2.state_dict()`` keys) and read back through
    the same loader as a downloaded ``depth_anything_v2_vits.pth``."""
    if source == "tiny" or source.startswith("random:"):
        size = "tiny" if source == "tiny" else source.split(":", 1)[1]
        if size not in DEPTH_SIZES or (size == "tiny" and source != "tiny"):
            raise CheckpointError(
                f"{source}: unknown Depth Anything V2 size {size!r} (one of vits, vitb, vitl)"
            )
        tiny = size == "tiny"
        spec = DepthSpec(
            source=source,
            architecture="depth-anything-v2-tiny(tests)" if tiny else f"depth-anything-v2-{size}",
            size=size,
            image_size=DEPTH_TINY_IMAGE_SIZE if tiny else DEPTH_IMAGE_SIZE,
            random_weights=True,
        )
        torch.manual_seed(seed)
        model = build_depth(spec)
        workdir.mkdir(parents=True, exist_ok=True)
        path = workdir / f"depth_anything_v2_{size}_random.pth"
        torch.save(hf_to_official(model.state_dict(), DEPTH_SIZES[size]["layers"]), path)
        spec.checkpoint = str(path)
        return spec
    path = Path(source)
    if path.is_dir():
        import json

        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"{path}: no config.json (expected a Hugging Face model folder)")
        cfg = json.loads(cfg_file.read_text())
        if cfg.get("model_type") != "depth_anything":
            raise CheckpointError(f"{cfg_file}: model_type {cfg.get('model_type')!r}, not depth_anything")
        backbone = cfg.get("backbone_config") or {}
        hidden = backbone.get("hidden_size")
        size = next((s for s, d in DEPTH_SIZES.items() if d["hidden"] == hidden), f"hidden{hidden}")
        return DepthSpec(
            source=source,
            architecture=f"depth-anything-v2-{size}(hf)",
            size=size,
            checkpoint=str(path.resolve()),
            checkpoint_format="hf",
            image_size=int(backbone.get("image_size", DEPTH_IMAGE_SIZE)),
        )
    sd = read_official(path)
    size = size_from_state_dict(sd, path)
    # The input size the position embedding was trained at (37 x 37 patches of 14: 518).
    grid = round((sd["pretrained.pos_embed"].shape[1] - 1) ** 0.5)
    return DepthSpec(
        source=source,
        architecture=f"depth-anything-v2-{size}",
        size=size,
        checkpoint=str(path),
        image_size=grid * 14,
    )
