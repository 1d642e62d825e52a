"""Trace-only modules: the exact computation each exported graph performs.

They reuse the trained submodules of sam2 / open_clip and keep Python branches out of the traced
path. The PyTorch reference backend runs these same modules, so "torch backend" and "ONNX graph"
are one definition executed by two runtimes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from seglabel_export import sources


class Sam2ImageEncoder(nn.Module):
    """images [B,3,S,S] (resized to S and normalised) -> image_embed [B,C,S/16,S/16] with
    ``no_mem_embed`` added (as ``SAM2ImagePredictor.set_image``), high_res_feats_0 [B,C/8,S/4,S/4],
    high_res_feats_1 [B,C/4,S/8,S/8]."""

    output_names = ["image_embed", "high_res_feats_0", "high_res_feats_1"]

    def __init__(self, sam2_model: nn.Module):
        super().__init__()
        self.model = sam2_model
        s = sam2_model.image_size
        self.feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]

    def forward(self, images: torch.Tensor):
        backbone_out = self.model.forward_image(images)
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        b = images.shape[0]
        # [HW, B, C] -> [B, C, H, W]
        feats = [f.permute(1, 2, 0).reshape(b, -1, h, w) for f, (h, w) in zip(vision_feats, self.feat_sizes)]
        return feats[2], feats[0], feats[1]


class Sam2MaskDecoder(nn.Module):
    """Prompt encoder + mask decoder for N prompts against ONE image's features.

    Inputs: image_embed [1,C,h,w], high_res_feats_0 [1,C/8,4h,4w], high_res_feats_1 [1,C/4,2h,2w],
    point_coords [N,P,2] (pixels of the S x S model input), point_labels [N,P] int32 (1 fg, 0 bg,
    -1 padding, 2/3 box corners).
    Outputs: masks [N,3,4h,4w] and iou_predictions [N,3] (multimask), stability_scores [N,3]
    (on these low-res logits), single_mask [N,1,4h,4w] and single_iou [N,1] (sam2's single-mask
    output, falling back to the most confident multimask when unstable).

    Same modules and arithmetic as ``MaskDecoder.predict_masks(repeat_image=True)``, with one change
    of order: the image side enters the two-way transformer with batch 1 and broadcasts, so the
    first layer's image-side projections (identical for every prompt, ~23% of the decoder's work)
    run once instead of N times. Upsampling to the original image stays out of the graph: the
    pipeline filters first.
    """

    output_names = ["masks", "iou_predictions", "stability_scores", "single_mask", "single_iou"]

    def __init__(self, sam2_model: nn.Module, mask_threshold: float = 0.0, stability_offset: float = 1.0):
        super().__init__()
        self.prompt_encoder = sam2_model.sam_prompt_encoder
        self.decoder = sam2_model.sam_mask_decoder
        self.mask_threshold = mask_threshold
        self.stability_offset = stability_offset

    def forward(self, image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels):
        pe, dec = self.prompt_encoder, self.decoder
        # sam2 pads every point prompt with one "not a point" (boxes travel as labelled points).
        sparse = pe._embed_points(point_coords, point_labels.float(), pad=True)
        n = sparse.shape[0]
        heads = [dec.iou_token.weight, dec.mask_tokens.weight]
        if dec.pred_obj_scores:
            heads.insert(0, dec.obj_score_token.weight)
        s = 1 if dec.pred_obj_scores else 0
        output_tokens = torch.cat(heads, dim=0).unsqueeze(0).expand(n, -1, -1)
        tokens = torch.cat((output_tokens, sparse), dim=1)
        # Dense prompt (no mask input) added once to the single image, not to N copies.
        src = image_embed + pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        hs, keys = dec.transformer(src, pe.get_dense_pe(), tokens)  # keys: [N, h*w, C] after layer 1
        iou_token_out = hs[:, s, :]
        mask_tokens_out = hs[:, s + 1 : s + 1 + dec.num_mask_tokens, :]
        c, h, w = image_embed.shape[1:]
        src = keys.transpose(1, 2).reshape(n, c, h, w)
        if dec.use_high_res_features:
            dc1, ln1, act1, dc2, act2 = dec.output_upscaling
            up = act1(ln1(dc1(src) + high_res_feats_1))
            up = act2(dc2(up) + high_res_feats_0)
        else:
            up = dec.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
        )
        _, c2, hh, ww = up.shape
        all_masks = (hyper_in @ up.reshape(n, c2, hh * ww)).reshape(n, -1, hh, ww)
        all_iou = dec.iou_prediction_head(iou_token_out)
        masks, iou = all_masks[:, 1:], all_iou[:, 1:]
        single_mask, single_iou = dec._dynamic_multimask_via_stability(all_masks, all_iou)
        return masks, iou, self.stability(masks), single_mask, single_iou

    def stability(self, logits: torch.Tensor) -> torch.Tensor:
        """IoU of the masks thresholded at +-offset (SAM's stability score); 0 for empty masks."""
        hi = (logits > self.mask_threshold + self.stability_offset).float().sum(dim=(-1, -2))
        lo = (logits > self.mask_threshold - self.stability_offset).float().sum(dim=(-1, -2))
        return torch.where(lo > 0, hi / lo.clamp(min=1.0), torch.zeros_like(lo))


class ClipImageEncoder(nn.Module):
    """pixel_values [B,3,224,224] (CLIP-normalised) -> L2-normalised image_embeds [B,D]."""

    output_names = ["image_embeds"]

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, pixel_values):
        return self.clip.encode_image(pixel_values, normalize=True)


class ClipTextEncoder(nn.Module):
    """input_ids [B,77] int32 (CLIP BPE, <sot> ... <eot>, zero padded) -> L2-normalised text_embeds [B,D]."""

    output_names = ["text_embeds"]

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, input_ids):
        return self.clip.encode_text(input_ids.long(), normalize=True)


def build_modules(manifest: dict, device: str = "cpu") -> dict:
    """The trace-only modules of a repository, rebuilt from its manifest (export, verify, torch backend)."""
    sam = manifest["sam2"]
    spec = sources.Sam2Spec(**sam["spec"])
    spec.checkpoint = resolve_path(manifest, spec.checkpoint)
    sam_model = sources.build_sam2(spec, device)
    mods = {
        "sam2_image_encoder": Sam2ImageEncoder(sam_model).eval(),
        "sam2_mask_decoder": Sam2MaskDecoder(
            sam_model, sam["mask_threshold"], sam["stability_offset"]
        ).eval(),
    }
    if manifest.get("clip"):
        cspec = sources.ClipSpec(**manifest["clip"]["spec"])
        cspec.checkpoint = resolve_path(manifest, cspec.checkpoint)
        clip_model = sources.build_clip(cspec, device)
        mods["clip_image_encoder"] = ClipImageEncoder(clip_model).eval()
        mods["clip_text_encoder"] = ClipTextEncoder(clip_model).eval()
    return mods


def resolve_path(manifest: dict, path: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else Path(manifest["_root"]) / p)
