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

    def forward(self, q, k, v, k_extra=None, v_extra=None) -> torch.Tensor:
        a = self.attn
        q = rotate(self._heads(a.q_proj(q)), self.cos, self.sin)
        k = rotate(self._heads(a.k_proj(k)), self.cos, self.sin)
        v = self._heads(a.v_proj(v))
        if k_extra is not None:
            k = torch.cat([k, self._heads(a.k_proj(k_extra))], dim=2)
            v = torch.cat([v, self._heads(a.v_proj(v_extra))], dim=2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
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

    def forward(self, curr, curr_pos, memory, memory_pos, ptr, ptr_pos) -> torch.Tensor:
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
            out = out + ca(q, keys, memory, ptr_keys, ptr)
            t = layer.norm3(out)
            out = out + layer.linear2(layer.activation(layer.linear1(t)))
        return ma.norm(out)


class Sam2MemoryEncoder(nn.Module):
    output_names = ("maskmem_features", "maskmem_pos_enc")
    """sam2's ``_encode_new_memory`` for one frame's objects: ``pix_feat`` [B, C, H, W] (the frame's
    lowest-resolution features, before any memory), ``mask_logits`` [B, 1, S, S] (the high-resolution
    mask logits at the model's image size), ``object_score`` [B, 1] (its object score logit),
    ``from_points`` [B] (1 where the mask came from clicks on a conditioning frame: binarised
    instead of squashed, as sam2's video predictor does: it builds the model with
    ``binarize_mask_from_pts_for_mem_enc``, per call where this is per object). Outputs the
    memory features [B, Cm, H, W] (with the no-object embedding where the object is absent) and
    their position encoding."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pix_feat, mask_logits, object_score, from_points):
        m = self.model
        pick = from_points.reshape(-1, 1, 1, 1).float()
        soft = pick * (mask_logits > 0).float() + (1 - pick) * torch.sigmoid(mask_logits)
        mask = soft * m.sigmoid_scale_for_mem_enc + m.sigmoid_bias_for_mem_enc
        out = m.memory_encoder(pix_feat, mask, skip_mask_sigmoid=True)
        feats, pos = out["vision_features"], out["vision_pos_enc"][-1]
        if m.no_obj_embed_spatial is not None:
            absent = 1.0 - (object_score > 0).float()
            feats = feats + absent[..., None, None] * m.no_obj_embed_spatial[..., None, None]
        return feats, pos


class Sam2TrackDecoder(nn.Module):
    """sam2's prompt encoder and mask decoder as the video path calls them (``_forward_sam_heads``),
    every output token kept: the choice between them (multimask on a first click, sam2's dynamic
    fallback when the single mask is unstable) is the host's, a small pure function
    (``pipeline.tracking.select_heads``), so that one graph serves clicks and tracked frames.

    Inputs, one row per object: ``image_embed`` [B, C, h, w] (the frame's features: conditioned on
    the memory on a tracked frame, plus ``no_mem_embed`` on a first frame), ``high_res_feats_0`` /
    ``high_res_feats_1``, ``point_coords`` [B, P, 2] and ``point_labels`` [B, P] (a frame without
    clicks: one point labelled -1, as sam2 pads), ``mask_input`` [B, 1, 4h, 4w] with ``has_mask``
    [B] (1: the mask logits are a dense prompt; 0: none, sam2's ``no_mask_embed``). Outputs:
    ``masks`` [B, 4, 4h, 4w] low-resolution logits of every mask token, ``ious`` [B, 4],
    ``obj_ptrs`` [B, 4, C] (each token's object pointer, mixed with the no-object pointer by the
    object score as sam2 mixes the chosen one), ``object_score`` [B, 1]."""

    output_names = ("masks", "ious", "obj_ptrs", "object_score")

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image_embed, high_res_feats_0, high_res_feats_1, point_coords, point_labels,
                mask_input, has_mask):  # fmt: skip
        m = self.model
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
            dense_prompt_embeddings=dense, repeat_image=False, high_res_features=[high_res_feats_0, high_res_feats_1],
        )  # fmt: skip
        ptrs = m.obj_ptr_proj(tokens)
        if m.pred_obj_scores:
            present = torch.sigmoid(score) if m.soft_no_obj_ptr else (score > 0).float()
            if m.fixed_no_obj_ptr:
                ptrs = present[..., None] * ptrs
            ptrs = ptrs + (1 - present[..., None]) * m.no_obj_ptr
        return masks, ious, ptrs, score


class Sam2MemoryConditioner(nn.Module):
    """A tracked frame's features conditioned on its memory, as sam2's
    ``_prepare_memory_conditioned_features`` does after choosing the frames
    (``pipeline.tracking.memory_plan``): the temporal encodings added here, from the model's
    weights. Inputs: ``curr`` / ``curr_pos`` [B, HW, C] (the frame's raw lowest-resolution features
    and position encoding), ``memory`` / ``memory_pos`` [B, F*HW, Cm] (the chosen frames' encoded
    masks and their spatial encoding, frame after frame), ``memory_tpos`` [F] int64 (each frame's
    t_pos: 0 for conditioning frames), ``ptrs`` [B, N, C] (object pointers), ``ptr_pos`` [N] (each
    pointer's frame offset divided by the largest offset allowed). Output ``pix_feat_with_mem``
    [B, C, H, W]."""

    output_names = ("pix_feat_with_mem",)

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.attention = Sam2MemoryAttention(model)
        self.side = model.image_size // model.backbone_stride

    def forward(self, curr, curr_pos, memory, memory_pos, memory_tpos, ptrs, ptr_pos):
        from sam2.modeling.sam2_utils import get_1d_sine_pe

        m = self.model
        b, c, cm = curr.shape[0], m.hidden_dim, m.mem_dim
        hw = self.side * self.side
        tpos = m.maskmem_tpos_enc.reshape(m.num_maskmem, cm)[m.num_maskmem - memory_tpos - 1]  # [F, Cm]
        memory_pos = (memory_pos.reshape(b, -1, hw, cm) + tpos[None, :, None, :]).reshape(b, -1, cm)
        if m.add_tpos_enc_to_obj_ptrs:
            pe = get_1d_sine_pe(ptr_pos, dim=c if m.proj_tpos_enc_in_obj_ptrs else cm)
            pe = m.obj_ptr_tpos_proj(pe)  # [N, Cm]
        else:
            pe = torch.zeros(ptr_pos.shape[0], cm)
        split = c // cm  # a pointer as C // Cm tokens where the memory is narrower
        tokens = ptrs.reshape(b, -1, split, cm).reshape(b, -1, cm)
        token_pos = pe.repeat_interleave(split, dim=0)[None].expand(b, -1, -1)
        out = self.attention(curr, curr_pos, memory, memory_pos, tokens, token_pos)
        return out.transpose(1, 2).reshape(b, c, self.side, self.side)
