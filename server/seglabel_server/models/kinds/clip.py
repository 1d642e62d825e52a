"""CLIP's two kinds: the image tower (crops -> L2-normalised embeddings) and the text tower
(token ids -> L2-normalised embeddings). Both batch by concatenation (the base kind's default)."""

from __future__ import annotations

from seglabel_server.models.kinds.base import ModelKind

IMAGE = ModelKind(
    name="clip",
    model="clip_image_encoder",
    family="clip",
    inputs=("pixel_values",),
    outputs=("image_embeds",),
    # Also the number of crops a request embeds per call, so labels stream in chunks of it.
    max_batch=32,
    priority=20,
    clicks=True,
    torch_builder="seglabel_server.models.torch_modules.build:clip_image_encoder",
    description="CLIP image tower: crops [B,3,224,224] -> embeddings [B,D]",
)

TEXT = ModelKind(
    name="text",
    model="clip_text_encoder",
    family="clip",
    inputs=("input_ids",),
    outputs=("text_embeds",),
    max_batch=32,  # the text tower is slower per row past ~16-32 on the CPU (measured)
    priority=10,
    clicks=True,
    torch_builder="seglabel_server.models.torch_modules.build:clip_text_encoder",
    description="CLIP text tower: token ids [B,77] -> embeddings [B,D]",
)

KINDS = (IMAGE, TEXT)
