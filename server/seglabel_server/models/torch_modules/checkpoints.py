"""Checkpoint loaders: SAM2.1 and CLIP torch modules rebuilt from a checkpoint file in the official
format (``torch.load(weights_only=True)``, strict key and shape checks with a message naming the file).

Used by export (which writes random/tiny checkpoints in the same format first) and by the PyTorch
backend at serve time. Imports torch: never imported on the ONNX Runtime / TensorRT serving path.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: the message names the file and what is wrong."""


@dataclass
class Sam2Spec:
    """How to rebuild a SAM2 model: config + overrides + checkpoint (recorded in the manifest)."""

    source: str
    architecture: str
    config: str
    overrides: list[str] = field(default_factory=list)
    checkpoint: str = ""
    random_weights: bool = False


@dataclass
class ClipSpec:
    """How to rebuild a CLIP model: open_clip config + checkpoint format + checkpoint."""

    source: str
    architecture: str
    model_config: dict
    checkpoint: str = ""
    checkpoint_format: str = "open_clip"  # or "openai"
    random_weights: bool = False


def _load_torch_file(path: str | os.PathLike) -> object:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, not a torch file...
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc


def _load_strict(module: torch.nn.Module, state_dict: dict, path: str | os.PathLike, what: str) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and hasattr(state_dict[k], "shape") and state_dict[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches (e.g. {'; '.join(mismatched[:3])})")
        raise CheckpointError(f"{path}: does not fit {what}: " + ", ".join(parts))
    module.load_state_dict(state_dict, strict=True)


def build_sam2(spec: Sam2Spec, device: str = "cpu") -> torch.nn.Module:
    """Instantiate the SAM2Base of ``spec`` and load its checkpoint (if any), eval mode."""
    from sam2.build_sam import build_sam2 as _build

    model = _build(spec.config, None, device="cpu", mode="eval", hydra_overrides_extra=list(spec.overrides))
    if spec.checkpoint:
        ckpt = _load_torch_file(spec.checkpoint)
        if not isinstance(ckpt, dict) or "model" not in ckpt:
            raise CheckpointError(
                f"{spec.checkpoint}: not a SAM2 checkpoint (expected a dict with a 'model' state dict)"
            )
        _load_strict(model, ckpt["model"], spec.checkpoint, f"SAM2.1 {spec.architecture}")
    return model.to(device).eval()


def build_clip(spec: ClipSpec, device: str = "cpu") -> torch.nn.Module:
    """Instantiate the open_clip CLIP of ``spec`` and load its checkpoint (if any), eval mode."""
    import open_clip

    model = open_clip.CLIP(**spec.model_config)
    if spec.checkpoint:
        sd, _ = read_clip_state_dict(spec.checkpoint)
        # OpenAI state dicts are partly float16; the model stays float32.
        _load_strict(
            model, {k: v.float() for k, v in sd.items()}, spec.checkpoint, f"CLIP {spec.architecture}"
        )
    return model.float().to(device).eval()


def read_clip_state_dict(path: str) -> tuple[dict, bool]:
    """(state dict, is it OpenAI's). OpenAI ships TorchScript archives whose state dict carries
    ``input_resolution``/``context_length``/``vocab_size``; open_clip ships plain state dicts."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    is_jit = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            sd = torch.jit.load(path, map_location="cpu").state_dict()
        is_jit = True
    except Exception:
        sd = _load_torch_file(path)
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"]
    if isinstance(sd, dict):
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if not isinstance(sd, dict) or "visual.conv1.weight" not in sd or "text_projection" not in sd:
        raise CheckpointError(f"{path}: not a CLIP ViT checkpoint (no visual.conv1.weight / text_projection)")
    is_openai = is_jit or "input_resolution" in sd
    # Not weights: OpenAI's metadata tensors, and the causal mask a TorchScript archive may carry.
    skip = ("input_resolution", "context_length", "vocab_size", "attn_mask")
    return {k: v for k, v in sd.items() if k not in skip and not k.endswith(".attn_mask")}, is_openai
