"""Trace-only modules of SAM2: the exact computation each exported graph performs (CLIP's and Depth
Anything's are in ``towers.py``).

They reuse the trained submodules of sam2 / open_clip and keep Python branches out of the traced
path. The PyTorch reference backend runs these same modules; for the mask decoder it runs the
reference formulation (:class:`Sam2MaskDecoder`, sam2's own calls) while the graph is exported from
:class:`Sam2MaskDecoderGraph`, the same function in a cheaper order, parity-checked against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def stability_score(logits: torch.Tensor, threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """IoU of the masks thresholded at threshold +- offset, over the last two axes (SAM's stability
    score; :func:`seglabel_server.amg.stability_score` on the host); 0 for empty masks."""
    hi = (logits > threshold + offset).float().sum(dim=(-1, -2))
    lo = (logits > threshold - offset).float().sum(dim=(-1, -2))
    return torch.where(lo > 0, hi / lo.clamp(min=1.0), torch.zeros_like(lo))


class Sam2ImageEncoder(nn.Module):
    """images [B,3,S,S] (resized to S and normalised) -> image_embed [B,C,S/16,S/16] with
    ``no_mem_embed`` added (as ``SAM2ImagePredictor.set_image``), high_res_feats_0 [B,C/8,S/4,S/4],
    high_res_feats_1 [B,C/4,S/8,S/8]."""

    input_names = ["images"]
    output_names = ["image_embed", "high_res_feats_0", "high_res_feats_1"]

    def __init__(self, sam2_model: nn.Module):
        super().__init__()
        self.model = sam2_model
        s = sam2_model.image_size
        self.feat_sizes = [(s // 4, s // 4), (s // 8, s // 8), (s // 16, s // 16)]
        self._freeze_pos_embed(s)

    def _freeze_pos_embed(self, s: int) -> None:
        """Hiera interpolates its positional embedding (bicubic, 7x7 -> the patch grid) on every
        forward; at the one input size it is a constant, so it is computed here once (same torch
        call) and kept as a buffer: the graph stores it instead of recomputing it (a Resize that was
        18% of the encoder's time under ONNX Runtime on 2 cores). Other sizes use sam2's own code."""
        trunk = self.model.image_encoder.trunk
        if not hasattr(trunk, "_get_pos_embed") or not hasattr(trunk, "patch_embed"):
            return
        original = trunk._get_pos_embed
        param = next(trunk.parameters())
        with torch.no_grad():
            hw = tuple(trunk.patch_embed(torch.zeros(1, 3, s, s, device=param.device)).shape[1:3])
            self.register_buffer("pos_embed", original(hw).detach().clone(), persistent=False)

        def get_pos_embed(size):
            return self.pos_embed if tuple(int(v) for v in size) == hw else original(size)

        trunk._get_pos_embed = get_pos_embed

    def forward(self, images: torch.Tensor):
        backbone_out = self.model.forward_image(images)
        _, vision_feats, _, _ = self.model._prepare_backbone_features(backbone_out)
        vision_feats[-1] = vision_feats[-1] + self.model.no_mem_embed
        b = images.shape[0]
        # [HW, B, C] -> [B, C, H, W]
        feats = [f.permute(1, 2, 0).reshape(b, -1, h, w) for f, (h, w) in zip(vision_feats, self.feat_sizes)]
        return feats[2], feats[0], feats[1]


class Sam2MaskDecoder(nn.Module):
    """Prompt encoder + mask decoder for N prompts against ONE image's features: the reference
    formulation (sam2's own module calls), run by the PyTorch backend and used as the parity
    reference of the exported graph (:class:`Sam2MaskDecoderGraph`).

    Inputs: image_embed [1,C,h,w], high_res_feats_0 [1,C/8,4h,4w], high_res_feats_1 [1,C/4,2h,2w],
    point_coords [N,P,2] (pixels of the S x S model input), point_labels [N,P] int32 (1 fg, 0 bg,
    -1 padding, 2/3 box corners), min_iou [1] float32.
    Outputs: iou_predictions [N,3] (multimask, every prompt); kept [M] int64: the prompts whose best
    multimask predicted IoU is above ``min_iou`` (ascending; -inf keeps all), and for those only:
    masks [M,3,4h,4w] low-res logits, stability_scores [M,3] (on those logits), single_mask
    [M,1,4h,4w] and single_iou [M,1] (sam2's single-mask output, falling back to the most
    confident multimask when unstable). A prompt whose candidates all fail sam2's predicted-IoU
    filter is never upscaled: upscaling is about half of the decoder's work.

    Same modules and arithmetic as ``MaskDecoder.predict_masks(repeat_image=True)``, with one change
    of order: the image side enters the two-way transformer with batch 1 and broadcasts, so the
    first layer's image-side projections (identical for every prompt) run once instead of N times.
    Upsampling to the original image stays out of the graph: the pipeline filters first.
    """

    input_names = [
        "image_embed",
        "high_res_feats_0",
        "high_res_feats_1",
        "point_coords",
        "point_labels",
        "min_iou",
    ]
    output_names = ["iou_predictions", "kept", "masks", "stability_scores", "single_mask", "single_iou"]

    def __init__(self, sam2_model: nn.Module, mask_threshold: float = 0.0, stability_offset: float = 1.0):
        super().__init__()
        self.prompt_encoder = sam2_model.sam_prompt_encoder
        self.decoder = sam2_model.sam_mask_decoder
        self.mask_threshold = mask_threshold
        self.stability_offset = stability_offset

    def tokens(self, point_coords, point_labels):
        """Output tokens + sparse prompt embeddings [N,T,C]; index of the IoU token."""
        pe, dec = self.prompt_encoder, self.decoder
        # sam2 pads every point prompt with one "not a point" (boxes travel as labelled points).
        sparse = pe._embed_points(point_coords, point_labels.float(), pad=True)
        heads = [dec.iou_token.weight, dec.mask_tokens.weight]
        if dec.pred_obj_scores:
            heads.insert(0, dec.obj_score_token.weight)
        output_tokens = torch.cat(heads, dim=0).unsqueeze(0).expand(sparse.shape[0], -1, -1)
        return torch.cat((output_tokens, sparse), dim=1), 1 if dec.pred_obj_scores else 0

    def heads(self, hs, s):
        """Transformer token outputs -> (all predicted IoUs [N,4], hypernetwork weights [N,4,C/8])."""
        dec = self.decoder
        mask_tokens_out = hs[:, s + 1 : s + 1 + dec.num_mask_tokens, :]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(dec.output_hypernetworks_mlps)], dim=1
        )
        return dec.iou_prediction_head(hs[:, s, :]), hyper_in

    def forward(self, image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels, min_iou):
        pe, dec = self.prompt_encoder, self.decoder
        tokens, s = self.tokens(point_coords, point_labels)
        n = tokens.shape[0]
        # Dense prompt (no mask input) added once to the single image, not to N copies.
        src = image_embed + pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        hs, keys = dec.transformer(src, pe.get_dense_pe(), tokens)  # keys: [N, h*w, C] after layer 1
        all_iou, hyper_in = self.heads(hs, s)
        c, h, w = image_embed.shape[1:]
        src = keys.transpose(1, 2).reshape(n, c, h, w)
        if dec.use_high_res_features:
            dc1, ln1, act1, dc2, act2 = dec.output_upscaling
            up = act1(ln1(dc1(src) + high_res_feats_1))
            up = act2(dc2(up) + high_res_feats_0)
        else:
            up = dec.output_upscaling(src)
        _, c2, hh, ww = up.shape
        all_masks = (hyper_in @ up.reshape(n, c2, hh * ww)).reshape(n, -1, hh, ww)
        kept = self.kept(all_iou, min_iou)
        return self.outputs(all_iou, kept, all_masks[kept], all_iou[kept])

    @staticmethod
    def kept(all_iou, min_iou):
        return torch.nonzero(all_iou[:, 1:].max(dim=1).values > min_iou).reshape(-1)

    def outputs(self, all_iou, kept, kept_masks, kept_iou):
        masks = kept_masks[:, 1:]
        single_mask, single_iou = self.decoder._dynamic_multimask_via_stability(kept_masks, kept_iou)
        return all_iou[:, 1:], kept, masks, self.stability(masks), single_mask, single_iou

    def stability(self, logits: torch.Tensor) -> torch.Tensor:
        return stability_score(logits, self.mask_threshold, self.stability_offset)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    n, length, hd = x.shape  # [N, L, H*d] -> [N, H, L, d]
    return x.reshape(n, length, heads, hd // heads).transpose(1, 2)


class Sam2MaskDecoderGraph(Sam2MaskDecoder):
    """The exported decoder: :class:`Sam2MaskDecoder`'s function (same weights, inputs, outputs;
    parity-checked against it) in an order that does less work on CPU runtimes (~1.5x faster
    under ONNX Runtime on 2 cores, before the ``min_iou`` selection):

    - per-prompt image tokens are never projected: in token->image attention the key projection is
      folded into the few queries (``q Wk^T`` then against the image; the key bias shifts every
      logit of a row equally, so softmax ignores it) and the value projection is applied after
      pooling (softmax rows sum to one); in image->token attention the query projection is folded
      into the keys and the output projection into the values (the output bias into them too,
      split over the heads);
    - the two stride-2 transposed convolutions are matmuls in channels-last order (the high-res
      features are rearranged once per call), and the pixel shuffle runs on the 4 mask logits
      instead of the 32-channel embedding.
    """

    def forward(self, image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels, min_iou):
        all_iou, hyper_in, keys = self.attend(image_embed, point_coords, point_labels)
        kept = self.kept(all_iou, min_iou)
        masks = self.upscale_masks(keys[kept], hyper_in[kept], high_res_feats_0, high_res_feats_1)
        return self.outputs(all_iou, kept, masks, all_iou[kept])

    def attend(self, image_embed, point_coords, point_labels, image_index=None):
        """Prompt tokens through the two-way transformer: (all predicted IoUs [N,4], hypernetwork
        weights [N,4,C/8], image tokens [N,HW,C]). ``image_index`` [N]: each prompt's image in a
        batch of B images (None: one image broadcast over the prompts)."""
        pe, dec = self.prompt_encoder, self.decoder
        tr = dec.transformer
        tokens, s = self.tokens(point_coords, point_labels)
        keys = (image_embed + pe.no_mask_embed.weight.reshape(1, -1, 1, 1)).flatten(2).transpose(1, 2)
        if image_index is not None:
            keys = keys[image_index]
        pos = pe.get_dense_pe().flatten(2).transpose(1, 2)  # [1, HW, C]
        queries = tokens
        for layer in tr.layers:
            if layer.skip_first_layer_pe:
                queries = layer.self_attn(q=queries, k=queries, v=queries)
            else:
                q = queries + tokens
                queries = queries + layer.self_attn(q=q, k=q, v=queries)
            queries = layer.norm1(queries)
            xk = keys + pos
            attn = _token_to_image(layer.cross_attn_token_to_image, queries + tokens, xk, keys)
            queries = layer.norm2(queries + attn)
            queries = layer.norm3(queries + layer.mlp(queries))
            attn = _image_to_token(layer.cross_attn_image_to_token, xk, queries + tokens, queries)
            keys = layer.norm4(keys + attn)
        attn = _token_to_image(tr.final_attn_token_to_image, queries + tokens, keys + pos, keys)
        hs = tr.norm_final_attn(queries + attn)
        all_iou, hyper_in = self.heads(hs, s)
        return all_iou, hyper_in, keys

    def outputs(self, all_iou, kept, kept_masks, kept_iou):
        """:meth:`Sam2MaskDecoder.outputs` with sam2's ``_dynamic_multimask_via_stability`` written
        without flattening reshapes (its ``flatten(-2)`` becomes a -1 reshape that fails for M=0)."""
        dec = self.decoder
        masks, iou = kept_masks[:, 1:], kept_iou[:, 1:]
        lh, lw = (4 * s for s in self.prompt_encoder.image_embedding_size)
        best = iou.argmax(dim=1, keepdim=True)  # [M,1], first maximum as torch.argmax
        best_mask = torch.gather(masks, 1, best[:, :, None, None].expand(-1, 1, lh, lw))
        single = kept_masks[:, :1]
        delta = dec.dynamic_multimask_stability_delta
        area_i = (single > delta).float().sum(dim=(-1, -2))
        area_u = (single > -delta).float().sum(dim=(-1, -2))
        stable = torch.where(area_u > 0, area_i / area_u, 1.0) >= dec.dynamic_multimask_stability_thresh
        single_mask = torch.where(stable[..., None, None], single, best_mask)
        single_iou = torch.where(stable, kept_iou[:, :1], torch.gather(iou, 1, best))
        return all_iou[:, 1:], kept, masks, self.stability(masks), single_mask, single_iou

    def upscale_masks(self, keys, hyper_in, feat_s0, feat_s1, image_index=None):
        """keys [M,HW,C] (row-major h x w), hyper_in [M,K,C2] -> mask logits [M,K,4h,4w]; the
        high-res features are one image's (batch 1), or B images' with ``image_index`` [M].

        Every size but M is a Python int from the model's configuration, so that each reshape has
        at most one unknown dimension, M (ONNX Runtime then copies it, which also works for M=0)."""
        h, w = self.prompt_encoder.image_embedding_size
        m, hw, c = keys.shape[0], h * w, self.decoder.transformer_dim
        if not self.decoder.use_high_res_features:  # no SAM2.1 config; sam2's own order
            up = self.decoder.output_upscaling(keys.transpose(1, 2).reshape(m, c, h, w))
            return (hyper_in @ up.flatten(2)).reshape(m, -1, 4 * h, 4 * w)
        dc1, ln1, act1, dc2, act2 = self.decoder.output_upscaling
        c1, c2, k = dc1.out_channels, dc2.out_channels, self.decoder.num_mask_tokens
        # Kernel 2 / stride 2: out[o, 2y+i, 2x+j] = sum_c in[c, y, x] W[c, o, i, j] + b[o], i.e. one
        # matmul to columns (i, j, o) per input pixel. Rows stay (y, x), then (y, x, i, j).
        w1 = dc1.weight.permute(0, 2, 3, 1).reshape(c, 4 * c1)
        b = 1 if image_index is None else feat_s1.shape[0]
        f1 = feat_s1.reshape(b, c1, -1).transpose(1, 2).reshape(b, h, 2, w, 2 * c1).transpose(2, 3)
        f1 = f1.reshape(b, hw, 4 * c1) + dc1.bias.repeat(4)  # rows (y, x), columns (i, j, o)
        if image_index is not None:
            f1 = f1[image_index]
        up = (keys @ w1 + f1).reshape(m, hw * 4, c1)
        up = act1(F.layer_norm(up, (c1,), ln1.weight, ln1.bias, ln1.eps))
        w2 = dc2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)  # columns (k, l, p)
        # feat_s0[p, 4y+2i+k, 4x+2j+l] -> rows (y, x, i, j), columns (k, l, p)
        f0 = feat_s0.reshape(b, c2, -1).transpose(1, 2).reshape(b, h, 2, 2, w, 2, 2 * c2)  # y,i,k,x,j,(l,p)
        f0 = f0.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hw * 4, 4 * c2) + dc2.bias.repeat(4)
        if image_index is not None:
            f0 = f0[image_index]
        up = act2(up @ w2 + f0).reshape(m, hw * 16, c2)
        logits = (up @ hyper_in.transpose(1, 2)).transpose(1, 2)  # [M, K, rows (y, x, i, j, k, l)]
        # Pixel shuffle on the K logits: (y, x, i, j, k, l) -> (y, i, k, x, j, l), in two moves of
        # contiguous blocks (one 7-D transpose is ~2x slower in ONNX Runtime).
        logits = logits.reshape(m, k, h, w, 2, 8).transpose(3, 4)  # [M, K, y, i, x, (j, k, l)]
        logits = logits.reshape(m, k, 2 * h, w, 2, 2, 2).permute(0, 1, 2, 5, 3, 4, 6)  # (y,i), k, x, j, l
        return logits.reshape(m, k, 4 * h, 4 * w)


class Sam2MaskDecoderMultiImage(Sam2MaskDecoderGraph):
    """:class:`Sam2MaskDecoderGraph` over prompts of several images in one call: the three feature
    inputs hold B images, ``image_index`` [N] int64 names each prompt's image. With B = 1 it is the
    graph's broadcast formulation; with B > 1 the first layer projects per-prompt image tokens
    (folded into the few tokens where that is cheaper), so requests on different images share one
    decoder call instead of queueing behind each other's (a GPU's layout; the CPU keeps one image
    per call, see DecoderKind)."""

    optional_inputs = ["image_index"]

    def forward(
        self,
        image_embed,
        high_res_feats_0,
        high_res_feats_1,
        point_coords,
        point_labels,
        min_iou,
        image_index=None,
    ):
        if image_index is None or image_embed.shape[0] == 1:
            return super().forward(
                image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels, min_iou
            )
        all_iou, hyper_in, keys = self.attend(image_embed, point_coords, point_labels, image_index)
        kept = self.kept(all_iou, min_iou)
        masks = self.upscale_masks(
            keys[kept], hyper_in[kept], high_res_feats_0, high_res_feats_1, image_index[kept]
        )
        return self.outputs(all_iou, kept, masks, all_iou[kept])


def _token_to_image(att, q_in, k_in, v_in):
    """Tokens attend to the image: q_in [N,T,C]; k_in, v_in [B,HW,C] with B = 1 (one image for all
    prompts: project it once) or N (per-prompt image tokens: fold the projections into the tokens)."""
    heads = att.num_heads
    q = _split_heads(att.q_proj(q_in), heads)  # [N,H,T,d]
    n, _, t, d = q.shape
    q = q * d**-0.5
    if k_in.shape[0] == 1:
        k = _split_heads(att.k_proj(k_in), heads)
        v = _split_heads(att.v_proj(v_in), heads)
        out = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
    else:
        qk = (q @ att.k_proj.weight.reshape(heads, d, -1)).reshape(n, heads * t, -1)  # [N,H*T,C]
        logits = (k_in @ qk.transpose(1, 2)).transpose(1, 2)  # [N,H*T,HW]
        pooled = (torch.softmax(logits, dim=-1) @ v_in).reshape(n, heads, t, -1)  # [N,H,T,C]
        wv = att.v_proj.weight.reshape(heads, d, -1).transpose(1, 2)  # [H,C,d]
        out = pooled @ wv + att.v_proj.bias.reshape(1, heads, 1, d)
    return att.out_proj(out.transpose(1, 2).flatten(2))


def _image_to_token(att, q_in, k_in, v_in):
    """The image attends to tokens: q_in [B,HW,C] (B = 1 or N); k_in, v_in [N,T,C] -> [N,HW,C]."""
    heads = att.num_heads
    k = _split_heads(att.k_proj(k_in), heads)  # [N,H,T,d]
    v = _split_heads(att.v_proj(v_in), heads)
    n, _, t, d = k.shape
    hw = q_in.shape[1]
    k = k * d**-0.5
    if q_in.shape[0] == 1:
        q = _split_heads(att.q_proj(q_in), heads)  # [1,H,HW,d], once for all prompts
        logits = (q @ k.transpose(-1, -2)).transpose(1, 2)  # [N,HW,H,T]
    else:
        qk = (k @ att.q_proj.weight.reshape(heads, d, -1)).reshape(n, heads * t, -1)  # [N,H*T,C]
        bias = (k @ att.q_proj.bias.reshape(1, heads, d, 1)).reshape(n, 1, heads * t)
        logits = (q_in @ qk.transpose(1, 2) + bias).reshape(n, hw, heads, t)
    p = torch.softmax(logits, dim=-1).reshape(n, hw, heads * t)
    wo = att.out_proj.weight.reshape(-1, heads, d).permute(1, 2, 0)  # [H,d,C]
    u = v @ wo + att.out_proj.bias / heads  # each head's weights sum to one: the bias, split
    return p @ u.reshape(n, heads * t, -1)
