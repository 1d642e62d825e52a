"""SAM2's video path as trace-only modules (issue 34, first part): the memory attention, with its
rotary position encoding rewritten in real arithmetic, and the memory encoder with sam2's own
mask scaling and no-object embedding. Both reuse the trained submodules of a ``SAM2Base`` and are
proved equal to sam2's (``tests/export/test_video_modules.py``).

sam2 rotates query and key pairs as complex numbers (``torch.view_as_complex`` / ``torch.polar``),
which ONNX cannot express (sam2#186). A pair (a, b) times the unit complex number (cos t, sin t) is
(a cos t - b sin t, a sin t + b cos t): the same numbers from real tensors, tables of cos and sin
built once per feature size. Memory keys of several frames share the current frame's table (sam2's
``rope_k_repeat``): they are viewed as [frames, HW] and the table broadcast over the frames, so the
number of memory frames stays a dynamic axis. Object-pointer tokens take no rotation (sam2's
``num_k_exclude_rope``): they are a separate input, appended after the rotation."""

from __future__ import annotations

import math

import torch
from torch import nn


def rope_tables(
    dim: int, end_x: int, end_y: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [end_x * end_y, dim // 2] of sam2's ``compute_axial_cis``: the first half of the
    pairs rotate with x, the second with y."""
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    t_x, t_y = t % end_x, torch.div(t, end_x, rounding_mode="floor")
    angles = torch.cat([torch.outer(t_x, freqs), torch.outer(t_y, freqs)], dim=-1)
    return torch.cos(angles), torch.sin(angles)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x`` [..., L, D] with each pair (x[2i], x[2i+1]) rotated by the table's angle of its row;
    L a multiple of the table's rows (frames of one feature map, sam2's ``rope_k_repeat``)."""
    rows = cos.shape[0]
    shape = x.shape
    pairs = x.reshape(*shape[:-2], -1, rows, shape[-1] // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
    return out.reshape(shape)


class RealRoPEAttention(nn.Module):
    """sam2's ``RoPEAttention`` on its own projections, rotation in real arithmetic, attention
    written out (softmax(q k^T / sqrt(d)) v). ``k_extra`` / ``v_extra``: keys and values that are
    not rotated (object pointers), appended to the rotated ones."""

    def __init__(self, attn: nn.Module, feat_sizes: tuple[int, int]):
        super().__init__()
        self.attn = attn
        self.heads = attn.num_heads
        cos, sin = rope_tables(attn.internal_dim // attn.num_heads, feat_sizes[0], feat_sizes[1])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, q, k, v, k_extra=None, v_extra=None, bias=None) -> torch.Tensor:
        """``bias`` [B, 1, 1, keys]: added to the attention logits (padded keys: a large negative)."""
        a = self.attn
        q = rotate(self._heads(a.q_proj(q)), self.cos, self.sin)
        k = rotate(self._heads(a.k_proj(k)), self.cos, self.sin)
        v = self._heads(a.v_proj(v))
        if k_extra is not None:
            k = torch.cat([k, self._heads(a.k_proj(k_extra))], dim=2)
            v = torch.cat([v, self._heads(a.v_proj(v_extra))], dim=2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        weights = torch.softmax(logits if bias is None else logits + bias, dim=-1)
        out = (weights @ v).transpose(1, 2)
        return a.out_proj(out.reshape(out.shape[0], out.shape[1], -1))


class Sam2MemoryAttention(nn.Module):
    output_names = ("pix_feat_with_mem",)
    """sam2's ``MemoryAttention`` (batch first): the current frame's features attend to themselves
    and to the memory bank. Inputs: ``curr`` / ``curr_pos`` [B, HW, C] (the frame's lowest-resolution
    features and their position encoding), ``memory`` / ``memory_pos`` [B, F*HW, Cm] (F memory
    frames' encoded masks, with sam2's temporal encoding already added to the positions), ``ptr`` /
    ``ptr_pos`` [B, P, Cm] (object-pointer tokens, not rotated; P may be 0). Output [B, HW, C]: the
    features the mask decoder reads on a tracked frame."""

    def __init__(self, model: nn.Module):
        super().__init__()
        ma = model.memory_attention
        if not ma.batch_first:
            raise ValueError("sam2 memory attention in sequence-first layout is not supported")
        self.ma = ma
        size = model.image_size // model.backbone_stride
        self.self_attn = nn.ModuleList(
            RealRoPEAttention(layer.self_attn, (size, size)) for layer in ma.layers
        )
        self.cross_attn = nn.ModuleList(
            RealRoPEAttention(layer.cross_attn_image, (size, size)) for layer in ma.layers
        )

    def forward(self, curr, curr_pos, memory, memory_pos, ptr, ptr_pos, bias=None) -> torch.Tensor:
        """``bias``: [B, 1, 1, memory + pointer tokens], for rows padded to the batch's longest."""
        ma = self.ma
        out = curr + 0.1 * curr_pos if ma.pos_enc_at_input else curr
        for layer, sa, ca in zip(ma.layers, self.self_attn, self.cross_attn):
            t = layer.norm1(out)
            q = t + curr_pos if layer.pos_enc_at_attn else t
            out = out + sa(q, q, t)
            t = layer.norm2(out)
            q = t + curr_pos if layer.pos_enc_at_cross_attn_queries else t
            keys = memory + memory_pos if layer.pos_enc_at_cross_attn_keys else memory
            ptr_keys = ptr + ptr_pos if layer.pos_enc_at_cross_attn_keys else ptr
            out = out + ca(q, keys, memory, ptr_keys, ptr, bias)
            t = layer.norm3(out)
            out = out + layer.linear2(layer.activation(layer.linear1(t)))
        return ma.norm(out)


def raw_features(model: nn.Module, image_embed: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The frames' lowest-resolution features as sam2's tracker reads them, one row per object:
    the image encoder's ``image_embed`` (which adds ``no_mem_embed``, as the image predictor
    does, so that one encoder serves images and video) less ``no_mem_embed``, row ``rows[i]``."""
    return image_embed.index_select(0, rows) - model.no_mem_embed.reshape(1, -1, 1, 1)


class Sam2MemoryEncoder(nn.Module):
    output_names = ("maskmem_features",)
    """sam2's ``_encode_new_memory`` for a batch of objects: ``image_embed`` [F, C, H, W] (the image
    encoder's output for F frames) and ``rows`` [B] (the frame of each object), ``mask_logits``
    [B, 1, 4H, 4W] (the low-resolution mask logits chosen for the frame, upsampled here to the
    model's image size as sam2 does), ``object_score`` [B, 1] (its object score logit),
    ``from_points`` [B] (1 where the mask came from clicks on a conditioning frame: binarised
    instead of squashed, as sam2's video predictor does: it builds the model with
    ``binarize_mask_from_pts_for_mem_enc``, per call where this is per object). Output: the memory
    features [B, Cm, H, W], with the no-object embedding where the object is absent. Their
    position encoding depends on the shape only (``Sam2MemoryConditioner`` holds it)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image_embed, rows, mask_logits, object_score, from_points):
        m = self.model
        pix_feat = raw_features(m, image_embed, rows)
        size = (m.image_size, m.image_size)
        high = torch.nn.functional.interpolate(mask_logits, size=size, mode="bilinear", align_corners=False)
        pick = from_points.reshape(-1, 1, 1, 1).float()
        soft = pick * (high > 0).float() + (1 - pick) * torch.sigmoid(high)
        mask = soft * m.sigmoid_scale_for_mem_enc + m.sigmoid_bias_for_mem_enc
        feats = m.memory_encoder(pix_feat, mask, skip_mask_sigmoid=True)["vision_features"]
        if m.no_obj_embed_spatial is not None:
            absent = 1.0 - (object_score > 0).float()
            feats = feats + absent[..., None, None] * m.no_obj_embed_spatial[..., None, None]
        return feats


class Sam2TrackDecoder(nn.Module):
    """sam2's prompt encoder and mask decoder as the video path calls them (``_forward_sam_heads``),
    every output token kept: the choice between them (multimask on a first click, sam2's dynamic
    fallback when the single mask is unstable) is the host's, a small pure function
    (``pipeline.tracking.select_heads``), so that one graph serves clicks and tracked frames.

    Inputs, one row per object: ``image_embed`` [B, C, h, w] (the frame's features: conditioned on
    the memory on a tracked frame, the image encoder's own (with ``no_mem_embed``) on a first frame),
    ``high_res_feats_0`` / ``high_res_feats_1`` [F, ...] of F frames and ``rows`` [B] (each object's
    frame among them), ``point_coords`` [B, P, 2] and ``point_labels`` [B, P] (a frame without
    clicks: one point labelled -1, as sam2 pads), ``mask_input`` [B, 1, 4h, 4w] with ``has_mask``
    [B] (1: the mask logits are a dense prompt; 0: none, sam2's ``no_mask_embed``). Outputs:
    ``masks`` [B, 4, 4h, 4w] low-resolution logits of every mask token, ``ious`` [B, 4],
    ``obj_ptrs`` [B, 4, C] (each token's object pointer, mixed with the no-object pointer by the
    object score as sam2 mixes the chosen one), ``object_score`` [B, 1]."""

    output_names = ("masks", "ious", "obj_ptrs", "object_score")

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image_embed, high_res_feats_0, high_res_feats_1, rows, point_coords, point_labels,
                mask_input, has_mask):  # fmt: skip
        m = self.model
        high_res = [high_res_feats_0.index_select(0, rows), high_res_feats_1.index_select(0, rows)]
        pe, dec = m.sam_prompt_encoder, m.sam_mask_decoder
        sparse = pe._embed_points(point_coords, point_labels, pad=True)
        b = image_embed.shape[0]
        flag = has_mask.reshape(-1, 1, 1, 1).float()
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
            b, -1, image_embed.shape[2], image_embed.shape[3]
        )
        dense = flag * pe.mask_downscaling(mask_input) + (1 - flag) * no_mask
        masks, ious, tokens, score = dec.predict_masks(
            image_embeddings=image_embed, image_pe=pe.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, repeat_image=False, high_res_features=high_res,
        )  # fmt: skip
        ptrs = m.obj_ptr_proj(tokens)
        if m.pred_obj_scores:
            present = torch.sigmoid(score) if m.soft_no_obj_ptr else (score > 0).float()
            if m.fixed_no_obj_ptr:
                ptrs = present[..., None] * ptrs
            ptrs = ptrs + (1 - present[..., None]) * m.no_obj_ptr
        return masks, ious, ptrs, score


PAD = -1e9  # attention logit of a padded memory key or pointer (exp underflows to exactly 0)


class Sam2MemoryConditioner(nn.Module):
    """Tracked frames' features conditioned on each object's memory, as sam2's
    ``_prepare_memory_conditioned_features`` does after choosing the frames
    (``pipeline.tracking.memory_plan``), for a batch of objects whose plans differ: each row padded
    to the batch's most memory frames and pointers, the padding masked out of the attention.

    Inputs: ``image_embed`` [F, C, H, W] (the image encoder's output for F frames) and ``rows``
    [B] (each object's frame); ``memory`` [B, M, Cm, H, W] (each object's chosen encoded masks),
    ``memory_tpos`` [B, M] int64 (each one's t_pos: 0 for conditioning frames), ``memory_valid``
    [B, M] (0 for padding); ``ptrs`` [B, N, C] (object pointers), ``ptr_pos`` [B, N] (each one's
    frame offset divided by the largest offset allowed), ``ptr_valid`` [B, N]. The position
    encodings that depend on the shape only (the frame's, the memory's) are constants of the
    graph; the temporal ones come from the model's weights. Output ``pix_feat_with_mem``
    [B, C, H, W]."""

    output_names = ("pix_feat_with_mem",)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.attention = Sam2MemoryAttention(model)
        side = model.image_size // model.backbone_stride
        self.side = side
        with torch.no_grad():
            curr_pos = model.image_encoder.neck.position_encoding(
                torch.zeros(1, model.hidden_dim, side, side)
            )
            mem_pos = model.memory_encoder.position_encoding(torch.zeros(1, model.mem_dim, side, side))
        self.register_buffer("curr_pos", curr_pos.flatten(2).transpose(1, 2), persistent=False)  # [1, HW, C]
        self.register_buffer(
            "memory_pos", mem_pos.flatten(2).transpose(1, 2), persistent=False
        )  # [1, HW, Cm]

    def forward(self, image_embed, rows, memory, memory_tpos, memory_valid, ptrs, ptr_pos, ptr_valid):
        from sam2.modeling.sam2_utils import get_1d_sine_pe

        m = self.model
        b, c, cm = rows.shape[0], m.hidden_dim, m.mem_dim
        hw = self.side * self.side
        curr = raw_features(m, image_embed, rows).flatten(2).transpose(1, 2)
        curr_pos = self.curr_pos.expand(b, -1, -1)
        tpos = m.maskmem_tpos_enc.reshape(m.num_maskmem, cm)[m.num_maskmem - memory_tpos - 1]  # [B, M, Cm]
        memory_pos = (self.memory_pos[:, None] + tpos[:, :, None, :]).reshape(b, -1, cm)
        memory = memory.flatten(3).transpose(2, 3).reshape(b, -1, cm)
        if m.add_tpos_enc_to_obj_ptrs:
            pe = get_1d_sine_pe(ptr_pos, dim=c if m.proj_tpos_enc_in_obj_ptrs else cm)
            pe = m.obj_ptr_tpos_proj(pe)  # [B, N, Cm]
        else:
            pe = torch.zeros(b, ptr_pos.shape[1], cm)
        split = c // cm  # a pointer as C // Cm tokens where the memory is narrower
        tokens = ptrs.reshape(b, -1, split, cm).reshape(b, -1, cm)
        token_pos = pe[:, :, None].expand(-1, -1, split, -1).reshape(b, -1, cm)
        mem_valid = memory_valid[:, :, None].expand(-1, -1, hw).reshape(b, -1)
        ptr_valid = ptr_valid[:, :, None].expand(-1, -1, split).reshape(b, -1)
        valid = torch.cat([mem_valid, ptr_valid], 1)
        bias = ((1.0 - valid.float()) * PAD)[:, None, None, :]
        out = self.attention(curr, curr_pos, memory, memory_pos, tokens, token_pos, bias)
        return out.transpose(1, 2).reshape(b, c, self.side, self.side)


def tracking_settings(model: nn.Module) -> dict:
    """The settings the host's tracking loop reads (sam2's names), as the manifest records them."""
    dec = model.sam_mask_decoder
    return {
        "image_size": model.image_size,
        "num_maskmem": model.num_maskmem,
        "max_cond_frames_in_attn": model.max_cond_frames_in_attn,
        "memory_temporal_stride_for_eval": model.memory_temporal_stride_for_eval,
        "max_obj_ptrs_in_encoder": model.max_obj_ptrs_in_encoder,
        "only_obj_ptrs_in_the_past_for_eval": model.only_obj_ptrs_in_the_past_for_eval,
        "use_signed_tpos_enc_to_obj_ptrs": model.use_signed_tpos_enc_to_obj_ptrs,
        "use_multimask_token_for_obj_ptr": model.use_multimask_token_for_obj_ptr,
        "dynamic_multimask_via_stability": dec.dynamic_multimask_via_stability,
        "dynamic_multimask_stability_delta": dec.dynamic_multimask_stability_delta,
        "dynamic_multimask_stability_thresh": dec.dynamic_multimask_stability_thresh,
        "pred_obj_scores": model.pred_obj_scores,
        "multimask_output_in_sam": model.multimask_output_in_sam,
        "multimask_output_for_tracking": model.multimask_output_for_tracking,
        "multimask_min_pt_num": model.multimask_min_pt_num,
        "multimask_max_pt_num": model.multimask_max_pt_num,
    }
