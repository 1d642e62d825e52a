"""The video path's modules on the full-size hiera-tiny (random weights): equality with sam2's own
(memory attention with a full bank of 7 frames + 16 pointers, the track decoder on one click, the
memory encoder) in torch and ONNX Runtime, and their ONNX Runtime time on this machine. Printed,
never asserted (the tests prove the same on the tiny model).

    python scripts/video_parity_full.py
"""

import pathlib
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch
from seglabel_export import sources
from seglabel_export.exporter import _export_graph
from seglabel_server.models.torch_modules.checkpoints import build_sam2
from seglabel_server.models.torch_modules.video import (
    Sam2MemoryAttention,
    Sam2MemoryEncoder,
    Sam2TrackDecoder,
)
from seglabel_server.pipeline.tracking import select_heads

torch.manual_seed(0)
m = build_sam2(
    sources.Sam2Spec(
        source="random:tiny",
        architecture="t",
        config=sources.SAM2_CONFIGS["tiny"],
        overrides=list(sources.SAM2_VIDEO_OVERRIDES),
    )
)
side = m.image_size // m.backbone_stride


def inputs(F, P):
    r = torch.randn
    return {
        "curr": r(1, side * side, 256),
        "curr_pos": r(1, side * side, 256),
        "memory": r(1, F * side * side, 64),
        "memory_pos": r(1, F * side * side, 64),
        "ptr": r(1, P, 64),
        "ptr_pos": r(1, P, 64),
    }


att = Sam2MemoryAttention(m).eval()
x = inputs(7, 16)
seq = lambda t: t.transpose(0, 1)
with torch.no_grad():
    want = seq(
        m.memory_attention(
            curr=seq(x["curr"]),
            curr_pos=seq(x["curr_pos"]),
            memory=seq(torch.cat([x["memory"], x["ptr"]], 1)),
            memory_pos=seq(torch.cat([x["memory_pos"], x["ptr_pos"]], 1)),
            num_obj_ptr_tokens=16,
        )
    )
    t0 = time.perf_counter()
    got = att(**x)
    t_torch = time.perf_counter() - t0
print("full-size memory attention, 7 frames + 16 pointers: max |diff| torch", (got - want).abs().max().item())
d = pathlib.Path(tempfile.mkdtemp())
_export_graph(
    att,
    inputs(2, 4),
    {"memory": {1: "m"}, "memory_pos": {1: "m"}, "ptr": {1: "p"}, "ptr_pos": {1: "p"}},
    d / "a.onnx",
    17,
)
s = ort.InferenceSession(str(d / "a.onnx"), providers=["CPUExecutionProvider"])
feeds = {k: v.numpy() for k, v in x.items()}
s.run(None, feeds)
t0 = time.perf_counter()
o = s.run(None, feeds)[0]
t_ort = time.perf_counter() - t0
print(
    "ONNX Runtime max |diff|",
    np.abs(o - want.numpy()).max(),
    f"time ort {t_ort:.2f} s torch {t_torch:.2f} s",
)
b = 3
x = [torch.randn(b, 256, 64, 64), torch.randn(b, 32, 256, 256), torch.randn(b, 64, 128, 128)]
coords, labels = (
    torch.tensor([[[300.0, 500.0]]]).expand(b, -1, -1).clone(),
    torch.ones(b, 1, dtype=torch.int32),
)
d = Sam2TrackDecoder(m).eval()
with torch.no_grad():
    want = m._forward_sam_heads(x[0], {"point_coords": coords, "point_labels": labels}, None, x[1:], True)
    out = d(*x, coords, labels, torch.zeros(b, 1, 256, 256), torch.zeros(b))
low, iou, ptr = select_heads(*(t.numpy() for t in out), multimask=True)
print(
    "full-size track decoder (1 click, multimask) vs sam2 _forward_sam_heads: mask",
    np.abs(low - want[3].numpy()).max(),
    "ptr",
    np.abs(ptr - want[5].numpy()).max(),
    "score",
    np.abs(out[3].numpy() - want[6].numpy()).max(),
)
t = pathlib.Path(tempfile.mkdtemp())
ex = {
    "image_embed": x[0][:1],
    "high_res_feats_0": x[1][:1],
    "high_res_feats_1": x[2][:1],
    "point_coords": coords[:1],
    "point_labels": labels[:1],
    "mask_input": torch.zeros(1, 1, 256, 256),
    "has_mask": torch.zeros(1),
}
_export_graph(d, ex, {k: {0: "o"} for k in ex}, t / "d.onnx", 17)
s = ort.InferenceSession(str(t / "d.onnx"), providers=["CPUExecutionProvider"])
feeds = {
    "image_embed": x[0].numpy(),
    "high_res_feats_0": x[1].numpy(),
    "high_res_feats_1": x[2].numpy(),
    "point_coords": coords.numpy(),
    "point_labels": labels.numpy(),
    "mask_input": np.zeros((b, 1, 256, 256), np.float32),
    "has_mask": np.zeros(b, np.float32),
}
s.run(None, feeds)
t0 = time.perf_counter()
g = s.run(None, feeds)
dt = time.perf_counter() - t0
print(
    "ORT max |diff| masks",
    np.abs(g[0] - out[0].numpy()).max(),
    "ptrs",
    np.abs(g[2] - out[2].numpy()).max(),
    f"time for 3 objects {dt:.3f} s",
)
enc = Sam2MemoryEncoder(m).eval()
ex = {
    "pix_feat": torch.randn(1, 256, 64, 64),
    "mask_logits": torch.randn(1, 1, 1024, 1024),
    "object_score": torch.ones(1, 1),
    "from_points": torch.zeros(1),
}
_export_graph(enc, ex, {k: {0: "o"} for k in ex}, t / "e.onnx", 17)
s = ort.InferenceSession(str(t / "e.onnx"), providers=["CPUExecutionProvider"])
f = {
    "pix_feat": np.random.randn(3, 256, 64, 64).astype(np.float32),
    "mask_logits": np.random.randn(3, 1, 1024, 1024).astype(np.float32),
    "object_score": np.ones((3, 1), np.float32),
    "from_points": np.zeros(3, np.float32),
}
s.run(None, f)
t0 = time.perf_counter()
s.run(None, f)
print("memory encoder 3 objects %.3f s" % (time.perf_counter() - t0))
with torch.no_grad():
    vision = [torch.from_numpy(f["pix_feat"]).flatten(2).permute(2, 0, 1)]
    wf, wp = m._encode_new_memory(
        vision, [(64, 64)], torch.from_numpy(f["mask_logits"]), torch.from_numpy(f["object_score"]), False
    )
print("memory encoder ORT vs sam2 max |diff|", np.abs(s.run(None, f)[0] - wf.numpy()).max())
