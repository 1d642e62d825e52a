"""SAM2's video path, first part (issue 34): the memory attention with its rotary encoding in real
arithmetic, and the memory encoder, against sam2's own modules on the same (random, tiny) weights;
then exported to ONNX and run in ONNX Runtime with the number of memory frames and object pointers
as dynamic axes."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from seglabel_export import sources
from seglabel_export.exporter import _export_graph
from seglabel_server.models.torch_modules.checkpoints import build_sam2
from seglabel_server.models.torch_modules.video import (
    Sam2MemoryAttention,
    Sam2MemoryEncoder,
    rope_tables,
    rotate,
)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    spec = sources.Sam2Spec(source="tiny", architecture="tiny", config=sources.SAM2_CONFIGS["tiny"],
                            overrides=[*sources.SAM2_TINY_OVERRIDES, *sources.SAM2_TINY_VIDEO_OVERRIDES,
                                       *sources.SAM2_VIDEO_OVERRIDES])  # fmt: skip
    m = build_sam2(spec)
    with torch.no_grad():  # sam2 initialises these to zero; random values make the test see them
        for name in ("no_obj_embed_spatial", "maskmem_tpos_enc"):
            t = getattr(m, name, None)
            if t is not None:
                t.normal_()
    return m


def test_real_rotation_is_sams_complex_rotation():
    from sam2.modeling.position_encoding import apply_rotary_enc, compute_axial_cis

    dim, side = 16, 8
    q, k = torch.randn(2, 1, side * side, dim), torch.randn(2, 1, 3 * side * side, dim)  # k: 3 frames
    cis = compute_axial_cis(dim=dim, end_x=side, end_y=side)
    want_q, want_k = apply_rotary_enc(q, k, cis, repeat_freqs_k=True)
    cos, sin = rope_tables(dim, side, side)
    assert torch.allclose(rotate(q, cos, sin), want_q, atol=1e-6)
    assert torch.allclose(rotate(k, cos, sin), want_k, atol=1e-6)


def memory_inputs(model, frames: int, ptrs: int, batch: int = 2):
    side = model.image_size // model.backbone_stride
    c, cm = model.hidden_dim, model.mem_dim
    g = torch.Generator().manual_seed(frames * 10 + ptrs)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {
        "curr": r(batch, side * side, c), "curr_pos": r(batch, side * side, c),
        "memory": r(batch, frames * side * side, cm), "memory_pos": r(batch, frames * side * side, cm),
        "ptr": r(batch, ptrs, cm), "ptr_pos": r(batch, ptrs, cm),
    }  # fmt: skip


def sams_memory_attention(model, x) -> torch.Tensor:
    """sam2's own call (``_prepare_memory_conditioned_features``): sequence first, pointers last."""
    seq = lambda t: t.transpose(0, 1)  # noqa: E731
    memory = torch.cat([x["memory"], x["ptr"]], dim=1)
    memory_pos = torch.cat([x["memory_pos"], x["ptr_pos"]], dim=1)
    out = model.memory_attention(curr=seq(x["curr"]), curr_pos=seq(x["curr_pos"]), memory=seq(memory),
                                 memory_pos=seq(memory_pos), num_obj_ptr_tokens=x["ptr"].shape[1])  # fmt: skip
    return seq(out)


@pytest.mark.parametrize("frames,ptrs", [(1, 0), (2, 3), (3, 16)])
def test_memory_attention_equals_sams(model, frames, ptrs):
    x = memory_inputs(model, frames, ptrs)
    with torch.no_grad():
        want = sams_memory_attention(model, x)
        got = Sam2MemoryAttention(model).eval()(**x)
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5


def test_memory_encoder_equals_sams(model):
    side, s = model.image_size // model.backbone_stride, model.image_size
    g = torch.Generator().manual_seed(1)
    pix = torch.randn(2, model.hidden_dim, side, side, generator=g)
    logits = torch.randn(2, 1, s, s, generator=g) * 4
    score = torch.tensor([[3.0], [-2.0]])  # one object present, one absent
    enc = Sam2MemoryEncoder(model).eval()
    for from_points in (False, True):
        with torch.no_grad():
            vision = [pix.flatten(2).permute(2, 0, 1)]  # sam2's (HW)BC
            want_f, want_p = model._encode_new_memory(vision, [(side, side)], logits, score, from_points)
            got_f, got_p = enc(pix, logits, score, torch.full((2,), float(from_points)))
        assert (got_f - want_f).abs().max().item() < 1e-5
        assert (got_p - want_p[-1]).abs().max().item() < 1e-6
    # the no-object embedding reaches the absent object only
    assert not torch.allclose(got_f[1], enc(pix, logits, torch.tensor([[3.0], [3.0]]), torch.ones(2))[0][1])


def test_video_modules_export_to_onnx_and_match(model, tmp_path):
    att = Sam2MemoryAttention(model).eval()
    example = memory_inputs(model, 2, 3, batch=1)
    axes = {"memory": {1: "memory_tokens"}, "memory_pos": {1: "memory_tokens"}, "ptr": {1: "pointers"},
            "ptr_pos": {1: "pointers"}, "curr": {0: "batch"}, "curr_pos": {0: "batch"}}  # fmt: skip
    _export_graph(att, example, axes, tmp_path / "attention.onnx", 17)
    sess = ort.InferenceSession(str(tmp_path / "attention.onnx"), providers=["CPUExecutionProvider"])
    for frames, ptrs in ((1, 1), (2, 3), (4, 16)):  # other sizes than the traced one
        x = memory_inputs(model, frames, ptrs, batch=1)
        got = sess.run(None, {k: v.numpy() for k, v in x.items()})[0]
        with torch.no_grad():
            want = sams_memory_attention(model, x).numpy()
        assert np.abs(got - want).max() < 1e-4, (frames, ptrs)

    enc = Sam2MemoryEncoder(model).eval()
    side, s = model.image_size // model.backbone_stride, model.image_size
    ex = {"pix_feat": torch.randn(1, model.hidden_dim, side, side), "mask_logits": torch.randn(1, 1, s, s),
          "object_score": torch.ones(1, 1), "from_points": torch.zeros(1)}  # fmt: skip
    batch = {k: {0: "objects"} for k in ex}
    _export_graph(enc, ex, batch, tmp_path / "memory_encoder.onnx", 17)
    sess = ort.InferenceSession(str(tmp_path / "memory_encoder.onnx"), providers=["CPUExecutionProvider"])
    pix = torch.randn(3, model.hidden_dim, side, side)
    logits, score, pts = (
        torch.randn(3, 1, s, s) * 4,
        torch.tensor([[1.0], [-1.0], [2.0]]),
        torch.tensor([0.0, 1.0, 1.0]),
    )
    feats, pos = sess.run(None, {"pix_feat": pix.numpy(), "mask_logits": logits.numpy(),
                                 "object_score": score.numpy(), "from_points": pts.numpy()})  # fmt: skip
    with torch.no_grad():
        want_f, want_p = enc(pix, logits, score, pts)
    assert np.abs(feats - want_f.numpy()).max() < 1e-4 and np.abs(pos - want_p.numpy()).max() < 1e-5
