"""SAM2's video path, first part (issue 34): the memory attention with its rotary encoding in real
arithmetic, and the memory encoder, against sam2's own modules on the same (random, tiny) weights;
then exported to ONNX and run in ONNX Runtime with the number of memory frames and object pointers
as dynamic axes."""

from __future__ import annotations

import zlib

import numpy as np
import onnxruntime as ort
import pytest
import torch
from seglabel_export.exporter import _export_graph
from seglabel_server.models.torch_modules.video import (
    Sam2MemoryAttention,
    Sam2MemoryConditioner,
    Sam2MemoryEncoder,
    Sam2TrackDecoder,
    rope_tables,
    rotate,
)

from tests.export.video_models import tiny_video_model


@pytest.fixture(scope="module")
def model():
    return tiny_video_model(0)


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


def frame_features(model, frames: int, seed: int):
    """F frames' image-encoder outputs as the image path hands them over: raw features plus
    ``no_mem_embed`` (returned too: sam2's tracker reads the raw ones)."""
    side = model.image_size // model.backbone_stride
    g = torch.Generator().manual_seed(seed)
    raw = torch.randn(frames, model.hidden_dim, side, side, generator=g)
    return raw + model.no_mem_embed.reshape(1, -1, 1, 1).detach(), raw


def test_memory_encoder_equals_sams(model):
    side, s = model.image_size // model.backbone_stride, model.image_size
    g = torch.Generator().manual_seed(1)
    embed, raw = frame_features(model, 2, seed=1)
    rows = torch.tensor([1, 0])  # each object reads another frame
    low = torch.randn(2, 1, s // 4, s // 4, generator=g) * 4
    score = torch.tensor([[3.0], [-2.0]])  # one object present, one absent
    enc = Sam2MemoryEncoder(model).eval()
    for from_points in (False, True):
        with torch.no_grad():
            vision = [raw[rows].flatten(2).permute(2, 0, 1)]  # sam2's (HW)BC
            high = torch.nn.functional.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)
            want_f, want_p = model._encode_new_memory(vision, [(side, side)], high, score, from_points)
            got_f = enc(embed, rows, low, score, torch.full((2,), float(from_points)))
        assert (got_f - want_f).abs().max().item() < 1e-5
    # the memory's position encoding, a constant of the conditioner, is sam2's
    want_pos = want_p[-1][:1].flatten(2).transpose(1, 2)
    assert (Sam2MemoryConditioner(model).memory_pos - want_pos).abs().max().item() < 1e-6
    # the no-object embedding reaches the absent object only
    present = enc(embed, rows, low, torch.tensor([[3.0], [3.0]]), torch.ones(2))
    assert not torch.allclose(got_f[1], present[1]) and torch.allclose(got_f[0], present[0])


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
    s4 = model.image_size // 4
    embed, _ = frame_features(model, 1, seed=2)
    ex = {"image_embed": embed, "rows": torch.zeros(1, dtype=torch.int64), "mask_logits": torch.randn(1, 1, s4, s4),
          "object_score": torch.ones(1, 1), "from_points": torch.zeros(1)}  # fmt: skip
    axes = {k: {0: "objects"} for k in ex}
    axes["image_embed"] = {0: "frames"}
    _export_graph(enc, ex, axes, tmp_path / "memory_encoder.onnx", 17)
    sess = ort.InferenceSession(str(tmp_path / "memory_encoder.onnx"), providers=["CPUExecutionProvider"])
    embed, _ = frame_features(model, 2, seed=3)  # 2 frames, 3 objects
    feeds = {"image_embed": embed, "rows": torch.tensor([0, 1, 1]), "mask_logits": torch.randn(3, 1, s4, s4) * 4,
             "object_score": torch.tensor([[1.0], [-1.0], [2.0]]), "from_points": torch.tensor([0.0, 1.0, 1.0])}  # fmt: skip
    feats = sess.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    with torch.no_grad():
        want = enc(**feeds)
    assert np.abs(feats - want.numpy()).max() < 1e-4


def heads_inputs(model, batch: int, seed: int):
    side = model.image_size // model.backbone_stride
    c = model.hidden_dim
    g = torch.Generator().manual_seed(seed)
    return {
        "image_embed": torch.randn(batch, c, side, side, generator=g),
        "high_res_feats_0": torch.randn(batch, c // 8, 4 * side, 4 * side, generator=g),
        "high_res_feats_1": torch.randn(batch, c // 4, 2 * side, 2 * side, generator=g),
        "mask": torch.randn(batch, 1, 4 * side, 4 * side, generator=g) * 3,
    }


@pytest.fixture
def tuned(model, request):
    """The tiny model with its object score shifted (random weights put every object near -0.28,
    absent) and sam2's stability threshold set, so that both sides of each choice are seen:
    (present, threshold)."""
    present, thresh = request.param
    head = model.sam_mask_decoder.pred_obj_score_head
    last = head.layers[-1] if hasattr(head, "layers") else head
    dec = model.sam_mask_decoder
    keep = (last.bias.detach().clone(), dec.dynamic_multimask_stability_thresh)
    with torch.no_grad():
        last.bias += 2.0 if present else -2.0
    dec.dynamic_multimask_stability_thresh = thresh
    yield model
    with torch.no_grad():
        last.bias.copy_(keep[0])
    dec.dynamic_multimask_stability_thresh = keep[1]


CASES = [
    "one click, multimask",
    "box, one mask",
    "two clicks, one mask",
    "tracked frame",
    "tracked frame with mask",
]


@pytest.mark.parametrize("tuned", [(True, 0.98), (True, 0.0), (False, 0.98)], indirect=True,
                         ids=["present, unstable", "present, stable", "absent"])  # fmt: skip
@pytest.mark.parametrize("case", CASES)
def test_track_decoder_and_choice_equal_sams_heads(tuned, case):
    from seglabel_server.pipeline.tracking import HeadsConfig, select_heads

    model = tuned

    b, s = 3, model.image_size
    x = heads_inputs(model, b, seed=zlib.crc32(case.encode()) % 1000)
    points = {
        "one click, multimask": ([[[0.3 * s, 0.6 * s]]], [[1]]),
        "box, one mask": ([[[0.1 * s, 0.2 * s], [0.7 * s, 0.9 * s]]], [[2, 3]]),
        "two clicks, one mask": ([[[0.3 * s, 0.6 * s], [0.5 * s, 0.1 * s]]], [[1, 0]]),
    }.get(case)
    if points is None:  # sam2 pads a frame without clicks with one point labelled -1
        coords, labels = torch.zeros(b, 1, 2), -torch.ones(b, 1, dtype=torch.int32)
    else:
        coords = torch.tensor(points[0]).expand(b, -1, -1).clone()
        labels = torch.tensor(points[1], dtype=torch.int32).expand(b, -1).clone()
    multimask = case == "one click, multimask"
    with_mask = case == "tracked frame with mask"
    feats = [x["high_res_feats_0"], x["high_res_feats_1"]]
    with torch.no_grad():
        want = model._forward_sam_heads(
            x["image_embed"], None if points is None else {"point_coords": coords, "point_labels": labels},
            x["mask"] if with_mask else None, feats, multimask,
        )  # fmt: skip
        # the frames' high-resolution features given once per frame, read by row (here: reversed)
        rev = torch.arange(b - 1, -1, -1)
        out = Sam2TrackDecoder(model).eval()(x["image_embed"], feats[0][rev], feats[1][rev], rev, coords, labels,
                                             x["mask"], torch.full((b,), float(with_mask)))  # fmt: skip
    dec = model.sam_mask_decoder
    cfg = HeadsConfig(multimask_token_for_ptr=model.use_multimask_token_for_obj_ptr,
                      dynamic_fallback=dec.dynamic_multimask_via_stability,
                      stability_delta=dec.dynamic_multimask_stability_delta,
                      stability_thresh=dec.dynamic_multimask_stability_thresh, pred_obj_scores=model.pred_obj_scores)  # fmt: skip
    low, iou, ptr = select_heads(*(t.numpy() for t in out), multimask=multimask, cfg=cfg)
    _, _, want_ious, want_low, _, want_ptr, want_score = want
    assert np.abs(out[3].numpy() - want_score.numpy()).max() < 1e-5
    present = model.sam_mask_decoder.pred_obj_score_head is not None and bool((want_score > 0).all())
    assert present == (low.max() > -1024)  # the case is what its id says
    assert np.abs(low - want_low.numpy()).max() < 1e-4
    assert np.abs(ptr - want_ptr.numpy()).max() < 1e-5
    want_iou = want_ious.numpy()
    want_iou = want_iou.max(axis=1) if multimask else want_iou[:, 0]
    assert np.abs(iou - want_iou).max() < 1e-5


def test_track_decoder_exports_to_onnx_and_matches(model, tmp_path):
    dec = Sam2TrackDecoder(model).eval()
    x = heads_inputs(model, 2, seed=5)
    feats = [x["image_embed"], x["high_res_feats_0"], x["high_res_feats_1"]]
    example = dict(zip(("image_embed", "high_res_feats_0", "high_res_feats_1"), feats))
    example.update(rows=torch.arange(2), point_coords=torch.rand(2, 2, 2) * model.image_size, point_labels=torch.tensor([[1, 0], [2, 3]], dtype=torch.int32),
                   mask_input=x["mask"], has_mask=torch.tensor([0.0, 1.0]))  # fmt: skip
    axes = {k: {0: "objects"} for k in example}
    axes["point_coords"], axes["point_labels"] = {0: "objects", 1: "points"}, {0: "objects", 1: "points"}
    axes["high_res_feats_0"], axes["high_res_feats_1"] = {0: "frames"}, {0: "frames"}
    _export_graph(dec, example, axes, tmp_path / "track_decoder.onnx", 17)
    sess = ort.InferenceSession(str(tmp_path / "track_decoder.onnx"), providers=["CPUExecutionProvider"])
    y = heads_inputs(model, 3, seed=6)  # 3 objects, one point each (a tracked frame's padding)
    feeds = {"image_embed": y["image_embed"], "high_res_feats_0": y["high_res_feats_0"][:2],
             "high_res_feats_1": y["high_res_feats_1"][:2], "rows": torch.tensor([1, 0, 1]), "point_coords": torch.zeros(3, 1, 2),
             "point_labels": -torch.ones(3, 1, dtype=torch.int32), "mask_input": y["mask"],
             "has_mask": torch.tensor([1.0, 0.0, 1.0])}  # fmt: skip
    got = sess.run(None, {k: v.numpy() for k, v in feeds.items()})
    with torch.no_grad():
        want = dec(*feeds.values())
    for g, w in zip(got, want):
        assert g.shape == tuple(w.shape) and np.abs(g - w.numpy()).max() < 1e-4


@pytest.fixture(scope="module")
def model7():
    """The tiny model with sam2's 7 memory frames (the tiny overrides keep 2)."""
    return tiny_video_model(1, "++model.num_maskmem=7")


def conditioning_case(m, frame: int, cond: list[int], b: int, seed: int, num_frames: int = 30):
    """A bank of random encoded masks and pointers for ``b`` objects prompted on ``cond`` and
    tracked up to ``frame``; the frame's features (with and without ``no_mem_embed``); sam2's
    ``_prepare_memory_conditioned_features`` on them (the real position encodings) and our plan."""
    from seglabel_server.pipeline.tracking import MemoryConfig, memory_plan

    side, c, cm = m.image_size // m.backbone_stride, m.hidden_dim, m.mem_dim
    cons = Sam2MemoryConditioner(m)
    g = torch.Generator().manual_seed(seed)
    mem_pos = cons.memory_pos.transpose(1, 2).reshape(1, cm, side, side).expand(b, -1, -1, -1)
    bank = {t: {"maskmem_features": torch.randn(b, cm, side, side, generator=g), "maskmem_pos_enc": [mem_pos],
                "obj_ptr": torch.randn(b, c, generator=g)} for t in range(num_frames) if t != frame}  # fmt: skip
    tracked = {t for t in bank if t not in cond and t < frame}  # tracked so far, forward
    output = {"cond_frame_outputs": {t: bank[t] for t in cond if t != frame},
              "non_cond_frame_outputs": {t: bank[t] for t in tracked}}  # fmt: skip
    embed, raw = frame_features(m, 1, seed)
    curr = raw.flatten(2).permute(2, 0, 1).expand(-1, b, -1)
    pos = cons.curr_pos.transpose(0, 1).expand(-1, b, -1)
    with torch.no_grad():
        want = m._prepare_memory_conditioned_features(
            frame, False, [curr], [pos], [(side, side)], output, num_frames
        )
    cfg = MemoryConfig(num_maskmem=m.num_maskmem, max_cond_frames=m.max_cond_frames_in_attn,
                       stride=m.memory_temporal_stride_for_eval, max_obj_ptrs=m.max_obj_ptrs_in_encoder,
                       ptrs_only_past=m.only_obj_ptrs_in_the_past_for_eval,
                       signed_ptr_offsets=m.use_signed_tpos_enc_to_obj_ptrs)  # fmt: skip
    plan = memory_plan(frame, [t for t in cond if t != frame], tracked, num_frames, cfg)
    return bank, embed, want, plan


def conditioner_feeds(m, rows: list[tuple[dict, tuple, int]], num_frames: int = 30) -> dict:
    """One batch, each row (bank, plan, object index in the bank), padded to the longest."""
    t_max = min(num_frames, m.max_obj_ptrs_in_encoder) - 1
    m_len = max(len(plan[0]) for _, plan, _ in rows)
    n_len = max(len(plan[1]) for _, plan, _ in rows)
    side, c, cm, b = m.image_size // m.backbone_stride, m.hidden_dim, m.mem_dim, len(rows)
    f = {"memory": torch.zeros(b, m_len, cm, side, side), "memory_tpos": torch.zeros(b, m_len, dtype=torch.int64),
         "memory_valid": torch.zeros(b, m_len), "ptrs": torch.zeros(b, n_len, c), "ptr_pos": torch.zeros(b, n_len),
         "ptr_valid": torch.zeros(b, n_len)}  # fmt: skip
    for i, (bank, (mem, ptrs), k) in enumerate(rows):
        for j, (t, tpos) in enumerate(mem):
            f["memory"][i, j], f["memory_tpos"][i, j], f["memory_valid"][i, j] = (
                bank[t]["maskmem_features"][k],
                tpos,
                1,
            )
        for j, (t, off) in enumerate(ptrs):
            f["ptrs"][i, j], f["ptr_pos"][i, j], f["ptr_valid"][i, j] = bank[t]["obj_ptr"][k], off / t_max, 1
    return f


def test_conditioner_position_encodings_are_the_backbones(model7):
    m = model7
    with torch.no_grad():
        out = m.forward_image(torch.randn(1, 3, m.image_size, m.image_size))
    want = out["vision_pos_enc"][-1].flatten(2).transpose(1, 2)
    assert (Sam2MemoryConditioner(m).curr_pos - want).abs().max().item() < 1e-6


@pytest.mark.parametrize(
    "frame,cond,limit,stride",
    [
        (13, [0, 5], -1, 1),
        (13, [0, 5, 11], 2, 1),
        (3, [0], -1, 1),
        (20, [0, 16, 25], 2, 3),
        (6, [6, 2], -1, 1),
    ],
)
def test_memory_plan_and_conditioner_equal_sams(model7, frame, cond, limit, stride):
    """The frames our plan picks, conditioned by our module, give sam2's output."""
    m = model7
    m.max_cond_frames_in_attn, m.memory_temporal_stride_for_eval = limit, stride
    try:
        bank, embed, want, plan = conditioning_case(m, frame, cond, 2, seed=frame)
        feeds = conditioner_feeds(m, [(bank, plan, 0), (bank, plan, 1)])
        with torch.no_grad():
            got = Sam2MemoryConditioner(m).eval()(embed, torch.zeros(2, dtype=torch.int64), **feeds)
        assert got.shape == want.shape and (got - want).abs().max().item() < 1e-5
    finally:
        m.max_cond_frames_in_attn, m.memory_temporal_stride_for_eval = -1, 1


def test_conditioner_batches_objects_with_different_plans(model7):
    """Objects whose plans differ (memory frames, pointers) and frames in one batch, padded and
    masked: each row equals sam2 run on that object alone."""
    m = model7
    cases = [conditioning_case(m, 13, [0, 5], 1, seed=1), conditioning_case(m, 13, [11], 1, seed=2),
             conditioning_case(m, 3, [0], 1, seed=3)]  # fmt: skip
    assert len({(len(p[0]), len(p[1])) for _, _, _, p in cases}) == 3
    embed = torch.cat([c[1] for c in cases])
    feeds = conditioner_feeds(m, [(bank, plan, 0) for bank, _, _, plan in cases])
    with torch.no_grad():
        got = Sam2MemoryConditioner(m).eval()(embed, torch.arange(3), **feeds)
    for i, (_, _, want, _) in enumerate(cases):
        assert (got[i : i + 1] - want).abs().max().item() < 1e-5, i


def test_memory_conditioner_exports_to_onnx_and_matches(model7, tmp_path):
    m = model7
    cases = [conditioning_case(m, 13, [0, 5], 2, seed=4), conditioning_case(m, 20, [0, 16], 1, seed=5)]
    cond = Sam2MemoryConditioner(m).eval()
    bank, embed, _, plan = cases[0]
    example = {"image_embed": embed, "rows": torch.zeros(1, dtype=torch.int64),
               **conditioner_feeds(m, [(bank, (plan[0][:2], plan[1][:3]), 0)])}  # fmt: skip
    axes = {"image_embed": {0: "f"}, "rows": {0: "b"}, "memory": {0: "b", 1: "m"}, "memory_tpos": {0: "b", 1: "m"},
            "memory_valid": {0: "b", 1: "m"}, "ptrs": {0: "b", 1: "n"}, "ptr_pos": {0: "b", 1: "n"}, "ptr_valid": {0: "b", 1: "n"}}  # fmt: skip
    _export_graph(cond, example, axes, tmp_path / "conditioner.onnx", 17)
    sess = ort.InferenceSession(str(tmp_path / "conditioner.onnx"), providers=["CPUExecutionProvider"])
    rows = [(cases[0][0], cases[0][3], 0), (cases[0][0], cases[0][3], 1), (cases[1][0], cases[1][3], 0)]
    x = {
        "image_embed": torch.cat([cases[0][1], cases[1][1]]),
        "rows": torch.tensor([0, 0, 1]),
        **conditioner_feeds(m, rows),
    }
    got = sess.run(None, {k: v.numpy() for k, v in x.items()})[0]
    want = torch.cat([cases[0][2], cases[1][2]]).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4
