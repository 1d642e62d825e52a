"""GPU backends: the torch CUDA backend against torch on the CPU, and TensorRT engines end to end.
Skipped, with the reason, where CUDA / TensorRT are absent."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch
from seglabel_export.parity import rel_l2
from seglabel_server.kinds import sam2
from seglabel_server.repository import ModelRepository

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
trt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available(),
    reason="TensorRT engines need the tensorrt package and a CUDA GPU",
)


@cuda
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("bf16", 5e-2), ("fp16", 2e-2)])
def test_torch_cuda_matches_cpu(tiny_repo, precision, tol):
    from seglabel_server.backends import create_backend

    repo = ModelRepository.load(tiny_repo)
    cpu, gpu = create_backend("torch", repo, "cpu"), create_backend("torch", repo, "cuda", precision)
    x = np.random.default_rng(0).standard_normal((1, 3, 256, 256)).astype(np.float32)
    coords = np.random.default_rng(1).uniform(0, 256, (8, 1, 2)).astype(np.float32)
    labels = np.ones((8, 1), np.int32)
    a, b = (
        sam2.decode(cpu, sam2.encode(cpu, x)[0], coords, labels),
        sam2.decode(gpu, sam2.encode(gpu, x)[0], coords, labels),
    )
    assert rel_l2(b.masks.numpy(), a.masks.numpy()) < tol
    assert rel_l2(b.iou, a.iou) < tol


@trt
def test_tensorrt_engines_match_onnxruntime(tiny_repo, tmp_path, photo):
    from seglabel_export.trt import build_engines
    from seglabel_server.backends import create_backend

    repo_dir = tmp_path / "trt"
    shutil.copytree(tiny_repo, repo_dir)
    build_engines(repo_dir, fp16=False, max_prompts=64)
    repo = ModelRepository.load(repo_dir)
    ours, ref = create_backend("tensorrt", repo, "cuda"), create_backend("onnxruntime", repo)
    x = np.random.default_rng(0).standard_normal((2, 3, 256, 256)).astype(np.float32)
    fa, fb = sam2.encode(ours, x), sam2.encode(ref, x)
    assert rel_l2(fa[1].arrays["image_embed"], fb[1].arrays["image_embed"]) < 1e-3
    coords = np.random.default_rng(1).uniform(0, 256, (7, 2, 2)).astype(np.float32)
    labels = np.ones((7, 2), np.int32)
    a, b = sam2.decode(ours, fa[0], coords, labels), sam2.decode(ref, fb[0], coords, labels)
    assert rel_l2(a.masks.numpy(), b.masks.numpy()) < 1e-3
    # min_iou: the engine's data-dependent outputs (kept prompts) through the output allocator
    best = np.sort(b.iou.max(axis=1))
    cut = float((best[2] + best[3]) / 2)
    a, b = sam2.decode(ours, fa[0], coords, labels, cut), sam2.decode(ref, fb[0], coords, labels, cut)
    assert a.kept.tolist() == b.kept.tolist() and len(b.kept) == 4
    assert rel_l2(a.masks.numpy(), b.masks.numpy()) < 1e-3
    assert ours.info.name == "tensorrt" and "TensorRT" in ours.info.providers[0]
