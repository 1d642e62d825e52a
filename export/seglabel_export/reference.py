"""The reference the project is measured against: sam2's own automatic mask generator, and open_clip
called once per mask with its own preprocessing, as the original application ran them. The
benchmarks time it; the fidelity tests compare masks and labels with it."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from seglabel_server.models.torch_modules.build import resolve_path

from seglabel_export import sources


def reference_models(manifest: dict, device: str = "cpu") -> tuple[torch.nn.Module, torch.nn.Module]:
    """(sam2 model, open_clip model) of a repository, built from its checkpoints as users build them
    (none of the export's changes)."""
    sam_spec = sources.Sam2Spec(**manifest["sam2"]["spec"])
    sam_spec.checkpoint = resolve_path(manifest, sam_spec.checkpoint)
    clip_spec = sources.ClipSpec(**manifest["clip"]["spec"])
    clip_spec.checkpoint = resolve_path(manifest, clip_spec.checkpoint)
    return sources.build_sam2(sam_spec).to(device).eval(), sources.build_clip(clip_spec).to(device).eval()


def sam2_generator(
    sam, grid: int, iou: float, stability: float = 0.0, nms: float = 1.0, output_mode="binary_mask"
):
    """sam2's ``SAM2AutomaticMaskGenerator`` on ``sam``, 64 prompts per batch. Its predictor
    hard-codes the 1024-px feature sizes: they are set to the model's own (smaller test models)."""
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

    gen = SAM2AutomaticMaskGenerator(
        sam,
        points_per_side=grid,
        points_per_batch=64,
        pred_iou_thresh=iou,
        stability_score_thresh=stability,
        box_nms_thresh=nms,
        output_mode=output_mode,
    )
    s = sam.image_size
    gen.predictor._bb_feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
    return gen


class PerMaskClip:
    """open_clip's zero-shot label of each mask's box, one call per mask with open_clip's own
    preprocessing (PIL resize and crop), against "a photo of a {label}." for every label."""

    def __init__(self, clip, vocabulary, architecture: str = "ViT-B-32", device: str = "cpu"):
        import open_clip

        self.clip, self.vocabulary, self.device = clip, list(vocabulary), device
        size = clip.visual.image_size
        self.preprocess = open_clip.image_transform(
            size[0] if isinstance(size, (tuple, list)) else size, is_train=False
        )
        tokens = open_clip.get_tokenizer(architecture)([f"a photo of a {v}." for v in self.vocabulary])
        with torch.inference_mode():
            self.text = clip.encode_text(tokens.to(device), normalize=True)

    def __call__(self, image: np.ndarray, boxes_xywh) -> list[str]:
        out = []
        with torch.inference_mode():
            for box in boxes_xywh:
                x, y, w, h = (int(v) for v in box)
                crop = Image.fromarray(image).crop((x, y, x + max(w, 1), y + max(h, 1)))
                emb = self.clip.encode_image(self.preprocess(crop)[None].to(self.device), normalize=True)
                probs = (self.clip.logit_scale.exp() * emb @ self.text.T).softmax(-1)
                out.append(self.vocabulary[int(probs.argmax())])
        return out
