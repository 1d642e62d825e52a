"""``make bench-serial``'s script on the tiny models: the server with zero-cost models (every model's
outputs recorded once, replayed) over gRPC at two concurrencies, with its threads' sampled stacks;
and the zero-cost backend itself: outputs shaped like the real models', the decoder's IoU filter
applied as the graph applies it, and no way to start a server with it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from seglabel_server.backends import BACKENDS, create_backend
from seglabel_server.models.kinds import sam2
from seglabel_server.models.repository import ModelRepository

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

from benchlib import photo  # noqa: E402
from zero_backend import ZeroCostBackend  # noqa: E402


def test_zero_cost_backend_replays_the_real_models_outputs(tiny_repo):
    repo = ModelRepository.load(tiny_repo)
    real = create_backend("onnxruntime", repo)
    image = photo(256, 192)
    zero = ZeroCostBackend(repo, real, image, grid=4)
    assert "zero-cost" not in BACKENDS and zero.info.name.startswith("zero-cost")
    for model in repo.available_models({"sam2", "clip"}):
        zero.load(model)
    assert set(zero.loaded()) == {
        "sam2_image_encoder",
        "sam2_mask_decoder",
        "clip_image_encoder",
        "clip_text_encoder",
    }
    s = repo.sam2["image_size"]
    feats_real = real.run("sam2_image_encoder", {"images": np.zeros((1, 3, s, s), np.float32)})
    feats = zero.run("sam2_image_encoder", {"images": np.zeros((3, 3, s, s), np.float32)})
    for name, value in feats_real.items():
        assert feats[name].shape == (3, *value.shape[1:]) and feats[name].dtype == value.dtype
    # the grid's prompts get their own recorded rows; the IoU filter keeps what the graph keeps
    f = sam2.ImageFeatures({k: feats[k][:1] for k in sam2.ENCODER_OUTPUTS})
    pts = np.array(list(zero.rows))
    coords = np.frombuffer(b"".join(pts), np.float32).reshape(-1, 1, 2)[:5]
    labels = np.ones((5, 1), np.int32)
    everything = sam2.decode(zero, f, coords, labels)
    real_out = sam2.decode(
        real, sam2.ImageFeatures({k: zero.features[k] for k in sam2.ENCODER_OUTPUTS}), coords, labels
    )
    np.testing.assert_array_equal(everything.iou, real_out.iou)
    np.testing.assert_array_equal(everything.masks.numpy(), real_out.masks.numpy())
    cut = float(np.median(everything.iou.max(axis=1)))
    kept = sam2.decode(zero, f, coords, labels, min_iou=cut)
    assert kept.kept.tolist() == np.nonzero(everything.iou.max(axis=1) > cut)[0].tolist()
    emb = zero.run("clip_image_encoder", {"pixel_values": np.zeros((7, 3, 224, 224), np.float32)})[
        "image_embeds"
    ]
    assert emb.shape[0] == 7 and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    real.close()


@pytest.mark.slow
def test_bench_serial_runs_two_levels_with_a_profile(tiny_repo):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_serial.py"), "--models", str(tiny_repo), "--grid", "4",
           "--masks", "6", "--size", "256", "--concurrency", "1,4", "--requests", "4", "--profile"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    levels = [line for line in out.splitlines() if line.startswith("c=")]
    assert len(levels) == 2 and all("4 requests, 0 errors" in line and "masks 6" in line for line in levels)
    assert out.count("cores busy: server") == 2
    assert "where the server's threads were during c=4" in out and "seglabel-cpu" in out
    assert "throughput c=4 / c=1:" in out
