"""Trace-only modules of CLIP's two towers and Depth Anything: the exact computation each exported
graph performs, around the trained open_clip / transformers models."""

from __future__ import annotations

import torch
from torch import nn


class ClipImageEncoder(nn.Module):
    """pixel_values [B,3,224,224] (CLIP-normalised) -> L2-normalised image_embeds [B,D]."""

    input_names = ["pixel_values"]
    output_names = ["image_embeds"]

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, pixel_values):
        return self.clip.encode_image(pixel_values, normalize=True)


class ClipTextEncoder(nn.Module):
    """input_ids [B,77] int32 (CLIP BPE, <sot> ... <eot>, zero padded) -> L2-normalised text_embeds [B,D]."""

    input_names = ["input_ids"]
    output_names = ["text_embeds"]

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, input_ids):
        return self.clip.encode_text(input_ids.long(), normalize=True)


class DepthEstimator(nn.Module):
    """images [B,3,S,S] (resized to S, ImageNet-normalised) -> depth [B,S,S]: Depth Anything V2's
    relative inverse depth (larger is nearer), transformers' ``predicted_depth``."""

    input_names = ["images"]
    output_names = ["depth"]

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).predicted_depth
